-- extend: push a live hold's expiry later while its payment is in progress (3-D Secure, a
-- wallet). The new expiry is now + ttl_ms, capped at the hold's creation + max_total_ms, and
-- never earlier than the current one (an extension never shortens a hold). Asking beyond the
-- cap clamps instead of refusing: the shopper is mid-payment, and the longest the hold may
-- live is the most useful answer; the reply says `capped` and the real expiry either way.
-- A hold that is gone is never re-created: released, committed or unknown answers
-- hold_not_found, and a hold past its TTL is expired here first (its units go back to sale,
-- as commit.lua does) and then answers hold_not_found too.
-- KEYS[1] outbox stream, KEYS[2] hold record, KEYS[3] expiry index
-- ARGV: common; request = {hold_id, ttl_ms, max_total_ms, longest_ttl_ms}
-- Reply: {"ok", {hold_id, expires_at_ms, max_expires_at_ms, capped}, 0}
-- Errors: invalid, hold_not_found {hold_id, status}
local outbox, hold_key, expiry_key = KEYS[1], KEYS[2], KEYS[3]
local tenant, prefix, req, channel = ARGV[1], ARGV[2], cjson.decode(ARGV[3]), ARGV[4]

if not is_count(req.ttl_ms, 1) or not is_count(req.max_total_ms, 1)
  or not is_count(req.longest_ttl_ms, 1) then
  return fail('invalid', {detail = 'extend needs a ttl and a maximum total'})
end
local status, lines_json, expires_at, customer, created_at = unpack(redis.call('HMGET',
  hold_key, 'status', 'lines', 'expires_at', 'customer', 'created_at'))
if not status then return fail('hold_not_found', {hold_id = req.hold_id, status = 'unknown'}) end
local ts = now_ms()
expires_at = tonumber(expires_at)
if status == 'held' and expires_at <= ts then
  expire_hold(outbox, tenant, prefix, expiry_key, {}, req.hold_id, lines_json, customer, ts)
  return fail('hold_not_found', {hold_id = req.hold_id, status = 'expired'})
end
if status ~= 'held' then return fail('hold_not_found', {hold_id = req.hold_id, status = status}) end

-- A hold made before holds recorded their creation (and before extensions, so its expiry is
-- its creation + its TTL): assume the longest TTL a hold could be made with. Its true
-- creation is then never earlier than this estimate, so the cap is never later than the true
-- one (the default TTL would overshoot it for a hold made with a longer ttl_s).
local created = tonumber(created_at) or (expires_at - req.longest_ttl_ms)
local cap = created + req.max_total_ms
local wanted = ts + req.ttl_ms
local new_expiry = math.max(math.min(wanted, cap), expires_at)
if new_expiry ~= expires_at then
  redis.call('HSET', hold_key, 'expires_at', new_expiry)
  redis.call('ZADD', expiry_key, new_expiry, req.hold_id)
  -- The audit trace: one event per cell the hold reserves, changing no field (delta {}), so
  -- the trail filtered by SKU shows why its units stayed reserved longer than the TTL.
  local ctx = {ts = ts, tenant = tenant, channel = channel, ref = req.hold_id,
    key = 'extend:' .. req.hold_id .. ':' .. new_expiry,
    reason = 'hold extended to ' .. new_expiry}
  local cells, seen = {}, {}
  for _, line in ipairs(cjson.decode(lines_json)) do
    local c = cell_read(cells, prefix, line[1], line[2])
    if c and not seen[c] then
      seen[c] = true
      emit(outbox, ctx, 'extend', c, {})
    end
  end
end
return {'ok', cjson.encode({hold_id = req.hold_id, expires_at_ms = new_expiry,
  -- A legacy hold may already live past its estimated cap (it is never shortened): the
  -- latest it can live is then its own expiry.
  max_expires_at_ms = math.max(cap, new_expiry), capped = wanted > cap}), 0}
