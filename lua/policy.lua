-- policy: set a SKU's selling rules. safety and backorder_limit belong to one location;
-- low_stock_threshold and max_per_customer to the SKU. Setting it twice changes nothing.
-- KEYS[1] outbox stream, KEYS[2] the SKU's stock hash
-- ARGV: common; request = {sku, location, safety?, backorder_limit?, low_stock_threshold?,
--   max_per_customer?, preorder_limit?}
-- Reply: {"ok", {sku, location, safety, backorder_limit, low_stock_threshold,
--   max_per_customer}, 0}
-- Errors: invalid, unknown_sku
local outbox, stock = KEYS[1], KEYS[2]
local tenant, prefix, req, channel = ARGV[1], ARGV[2], cjson.decode(ARGV[3]), ARGV[4]

local function given(v) return v ~= nil and v ~= cjson.null end
if not (is_name(req.sku) and is_name(req.location)) then
  return fail('invalid', {detail = 'sku and location are required'})
end
-- A bundle has no stock of its own (lua/bundle.lua): its components do.
if redis.call('HEXISTS', bundles_key(prefix), req.sku) == 1 then
  return fail('bundle_conflict', {sku = req.sku,
    detail = 'a bundle has no stock of its own; change its components'})
end
for _, f in ipairs({'safety', 'backorder_limit', 'low_stock_threshold', 'max_per_customer',
    'preorder_limit'}) do
  if given(req[f]) and not is_count(req[f], 0) then
    return fail('invalid', {detail = f .. ' must be a whole number >= 0'})
  end
end
local c = cell_read({}, prefix, req.sku, req.location)
if not c then return fail('unknown_sku', {sku = req.sku, location = req.location}) end

local delta = {}
local changed = false
for _, f in ipairs({'safety', 'backorder_limit'}) do
  if given(req[f]) and req[f] ~= c[f] then
    delta[f] = req[f] - c[f]
    c[f] = req[f]
    changed = true
  end
end
for _, f in ipairs({'low_stock_threshold', 'max_per_customer', 'preorder_limit'}) do
  if given(req[f]) then redis.call('HSET', stock, f, req[f]) end
end
if changed then
  cell_write(c)
  emit(outbox, {ts = now_ms(), tenant = tenant, channel = channel, ref = req.sku,
    key = '', reason = 'policy'}, 'adjust', c, delta)
end
local sku_rules = redis.call('HMGET', stock, 'low_stock_threshold', 'max_per_customer',
  'preorder_limit')
return {'ok', cjson.encode({sku = req.sku, location = req.location, safety = c.safety,
  backorder_limit = c.backorder_limit, low_stock_threshold = tonumber(sku_rules[1] or '0'),
  max_per_customer = tonumber(sku_rules[2] or '0'),
  preorder_limit = tonumber(sku_rules[3] or '0')}), 0}
