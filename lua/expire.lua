-- expire: release holds whose TTL has passed, at most `limit` per call so one call stays short.
-- KEYS[1] outbox stream, KEYS[2] expiry index (zset hold_id -> expires_at ms)
-- ARGV: common; request = {limit}
-- Reply: {"ok", {expired = n, remaining_due = m}, 0}
local outbox, expiry_key = KEYS[1], KEYS[2]
local tenant, prefix, req, channel = ARGV[1], ARGV[2], cjson.decode(ARGV[3]), ARGV[4]
if not is_count(req.limit, 1) then return fail('invalid', {detail = 'limit must be positive'}) end

local ts = now_ms()
local due = redis.call('ZRANGEBYSCORE', expiry_key, '-inf', ts, 'LIMIT', 0, req.limit)
local expired = 0
for _, hold_id in ipairs(due) do
  local hold_key = prefix .. 'hold:' .. hold_id
  local status, lines_json, customer =
    unpack(redis.call('HMGET', hold_key, 'status', 'lines', 'customer'))
  if status == 'held' then
    local lines = cjson.decode(lines_json)
    local ctx = {ts = ts, tenant = tenant, channel = channel, ref = hold_id,
      key = 'expire:' .. hold_id, reason = 'hold ttl passed'}
    for _, ch in ipairs(hold_give_back({}, prefix, lines)) do
      cell_write(ch[1], 'reserved')
      emit(outbox, ctx, 'expire', ch[1], ch[2])
    end
    customer_give_back(prefix, customer, lines)
    redis.call('HSET', hold_key, 'status', 'expired')
    expired = expired + 1
  end
  redis.call('ZREM', expiry_key, hold_id)
end
local remaining = redis.call('ZCOUNT', expiry_key, '-inf', ts)
return {'ok', cjson.encode({expired = expired, remaining_due = remaining}), 0}
