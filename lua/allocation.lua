-- allocation: set or remove one channel's allocation rule for a SKU (stockgate/allocation.py).
-- A rule changes what the channel is shown, never a cell: so no cell is written, and the one
-- event appended has no `after` and an empty delta; its source.channel names the channel
-- whose rule changed, which is the one target the workers push (workers.propagation.targets).
-- The same rule again (or removing an absent one) changes nothing and emits nothing.
-- KEYS[1] outbox stream, KEYS[2] the SKU's stock hash, KEYS[3] the SKU's allocation hash
-- ARGV: common; request = {sku, channel, rule}: rule is the rule as canonical JSON text
--   (Python encodes it, so the same rule is the same text), or null to remove it.
-- Reply: {"ok", {sku, channel, changed}, 0}
-- Errors: invalid, unknown_sku
local outbox, stock, alloc = KEYS[1], KEYS[2], KEYS[3]
local tenant, prefix, req = ARGV[1], ARGV[2], cjson.decode(ARGV[3])

if not (is_name(req.sku) and is_name(req.channel)) then
  return fail('invalid', {detail = 'sku and channel are required'})
end
local rule = req.rule
if rule == cjson.null then rule = nil end
if rule ~= nil then
  -- The engine validated it (msgspec); checked again here because this is the only writer:
  -- a rule stored malformed would silently fall back to the channel's default.
  local ok, r = pcall(cjson.decode, type(rule) == 'string' and rule or '')
  if not ok or type(r) ~= 'table' then
    return fail('invalid', {detail = 'rule must be a JSON object'})
  end
  local n = 0
  for k, v in pairs(r) do
    if not (k == 'fixed' or k == 'percent' or k == 'max' or k == 'hide_below')
        or not is_count(v, 0) then
      return fail('invalid', {detail = 'rule fields are fixed, percent, max, hide_below: '
        .. 'whole numbers >= 0'})
    end
    n = n + 1
  end
  if n == 0 or (r.percent and r.percent > 100) or (r.fixed and (r.percent or r.max)) then
    return fail('invalid', {detail = 'a rule is {fixed} or {percent <= 100, max}, with '
      .. 'hide_below, and not empty'})
  end
end
-- A bundle (lua/bundle.lua) has no stock hash of its own; its channels show a derived figure
-- that a rule shares out like any other.
if redis.call('EXISTS', stock) == 0
    and redis.call('HEXISTS', bundles_key(prefix), req.sku) == 0 then
  return fail('unknown_sku', {sku = req.sku})
end

local old = redis.call('HGET', alloc, req.channel)
local changed = false
if rule ~= nil and old ~= rule then
  redis.call('HSET', alloc, req.channel, rule)
  changed = true
elseif rule == nil and old then
  redis.call('HDEL', alloc, req.channel)
  changed = true
end
if changed then
  emit(outbox, {ts = now_ms(), tenant = tenant, channel = req.channel, ref = req.sku, key = ''},
    'allocation', {sku = req.sku, loc = ''}, {},
    rule and ('allocation rule ' .. rule) or 'allocation rule removed: channel default applies')
end
return {'ok', cjson.encode({sku = req.sku, channel = req.channel, changed = changed}), 0}
