-- commit: a live hold becomes an order; its reserved units become committed.
-- KEYS[1] outbox stream, KEYS[2] hold record, KEYS[3] expiry index, KEYS[4] order record
-- ARGV: common; request = {hold_id, order_id, idem_ttl_ms}
-- Reply: {"ok", {order_id, hold_id, lines}, replayed}
-- Errors: hold_not_found (unknown, released or expired), idempotency_conflict (the hold was
--   committed to another order, or the order id already names another order)
local outbox, hold_key, expiry_key, order_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local tenant, prefix, req, channel = ARGV[1], ARGV[2], cjson.decode(ARGV[3]), ARGV[4]

local status, lines_json, expires_at, order_id, customer =
  unpack(redis.call('HMGET', hold_key, 'status', 'lines', 'expires_at', 'order_id', 'customer'))
if not is_name(req.order_id) then return fail('invalid', {detail = 'order_id is required'}) end
if status == 'committed' then
  if order_id ~= req.order_id then
    return fail('idempotency_conflict', {detail = 'hold already committed to another order'})
  end
  -- The order record may have expired before the hold record: answer from the hold.
  local reply = redis.call('HGET', order_key, 'reply') or cjson.encode(
    {order_id = order_id, hold_id = req.hold_id, lines = cjson.decode(lines_json)})
  return {'ok', reply, 1}
end
local ts = now_ms()
-- A hold past its TTL is dead even before the expiry sweep has released it.
if status ~= 'held' or tonumber(expires_at) <= ts then
  return fail('hold_not_found', {hold_id = req.hold_id, status = status or 'unknown'})
end
if redis.call('EXISTS', order_key) == 1 then
  return fail('idempotency_conflict', {detail = 'order_id already used by another order'})
end

local lines = cjson.decode(lines_json)
local cells, order_lines = {}, {}
for _, line in ipairs(lines) do
  local c = cell_read(cells, prefix, line[1], line[2])
  if not c then return fail('unknown_sku', {sku = line[1], location = line[2]}) end
end
local ctx = {ts = ts, tenant = tenant, channel = channel, ref = req.order_id,
  key = 'commit:' .. req.hold_id, reason = 'order placed from hold'}
for _, line in ipairs(lines) do
  local c = cell_read(cells, prefix, line[1], line[2])
  local q = line[3]
  local from_reserved = math.min(q, c.reserved)
  c.reserved = c.reserved - from_reserved
  c.committed = c.committed + q
  cell_write(c, 'reserved', 'committed')
  emit(outbox, ctx, 'commit', c, {reserved = -from_reserved, committed = q})
  order_lines[#order_lines + 1] = {sku = line[1], location = line[2], qty = q, open = q,
    fulfilled = 0, restocked = 0}
end
local reply = cjson.encode({order_id = req.order_id, hold_id = req.hold_id, lines = lines})
redis.call('HSET', order_key, 'status', 'open', 'reply', reply, 'fp', 'hold:' .. req.hold_id,
  'lines', cjson.encode(order_lines), 'channel', channel, 'hold_id', req.hold_id)
redis.call('PEXPIRE', order_key, req.idem_ttl_ms)
redis.call('HSET', hold_key, 'status', 'committed', 'order_id', req.order_id)
redis.call('ZREM', expiry_key, req.hold_id)
return {'ok', reply, 0}
