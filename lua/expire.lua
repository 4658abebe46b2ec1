-- expire: release holds whose TTL has passed, at most `limit` per call so one call stays short.
-- (hold, order and commit also expire the dead holds they meet; this sweep catches the rest.)
-- KEYS[1] outbox stream, KEYS[2] expiry index (zset hold_id -> expires_at ms)
-- ARGV: common; request = {limit}
-- Reply: {"ok", {expired = n, remaining_due = m}, 0}
local outbox, expiry_key = KEYS[1], KEYS[2]
local tenant, prefix, req = ARGV[1], ARGV[2], cjson.decode(ARGV[3])
if not is_count(req.limit, 1) then return fail('invalid', {detail = 'limit must be positive'}) end

local ts = now_ms()
local expired = expire_due(outbox, tenant, prefix, expiry_key, {}, ts, req.limit)
local remaining = redis.call('ZCOUNT', expiry_key, '-inf', ts)
return {'ok', cjson.encode({expired = expired, remaining_due = remaining}), 0}
