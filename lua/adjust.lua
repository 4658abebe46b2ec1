-- adjust: a person or system changes physical stock: receipts (delta > 0), shrinkage and
-- counts (delta < 0 or set_on_hand), damage and quality holds (unavailable_delta).
-- The first adjust of a SKU or location creates it.
-- KEYS[1] outbox stream, KEYS[2] idempotency record, KEYS[3] the SKU's stock hash
-- ARGV: common; request = {sku, location, delta?, set_on_hand?, unavailable_delta?, reason,
--   idempotency_key, fp, idem_ttl_ms}
-- Reply: {"ok", {sku, location, after = {...}}, replayed}
-- Errors: invalid (nothing to change, or a field would go below zero), idempotency_conflict
local outbox, idem_key, stock = KEYS[1], KEYS[2], KEYS[3]
local tenant, prefix, req, channel = ARGV[1], ARGV[2], cjson.decode(ARGV[3]), ARGV[4]

local replay = idem_lookup(idem_key, req.fp)
if replay then return replay end
local function opt_int(v) return v ~= nil and v ~= cjson.null end
local has_delta, has_set, has_unav =
  opt_int(req.delta), opt_int(req.set_on_hand), opt_int(req.unavailable_delta)
if not (is_name(req.sku) and is_name(req.location)) then
  return fail('invalid', {detail = 'sku and location are required'})
end
-- A bundle has no stock of its own (lua/bundle.lua): its components do.
if redis.call('HEXISTS', bundles_key(prefix), req.sku) == 1 then
  return fail('bundle_conflict', {sku = req.sku,
    detail = 'a bundle has no stock of its own; change its components'})
end
if not (has_delta or has_set or has_unav) or (has_delta and has_set) then
  return fail('invalid', {detail = 'give delta or set_on_hand (not both), or unavailable_delta'})
end
-- Lua would coerce a numeric string ("5") in math.abs and arithmetic: demand real numbers.
local function is_signed(v) return type(v) == 'number' and is_count(math.abs(v), 0) end
if (has_delta and not is_signed(req.delta))
  or (has_set and not is_count(req.set_on_hand, 0))
  or (has_unav and not is_signed(req.unavailable_delta)) then
  return fail('invalid', {detail = 'quantities must be whole numbers within range'})
end

local cells = {}
local c = cell_read(cells, prefix, req.sku, req.location)
local created = false
if not c then
  created = true
  c = {key = stock, sku = req.sku, loc = req.location, on_hand = 0, reserved = 0, committed = 0,
    unavailable = 0, safety = 0, backorder_limit = 0}
end
local new_on_hand = c.on_hand
if has_delta then new_on_hand = c.on_hand + req.delta end
if has_set then new_on_hand = req.set_on_hand end
local new_unav = c.unavailable + (has_unav and req.unavailable_delta or 0)
if new_on_hand < 0 or new_on_hand > MAX_QTY then
  return fail('invalid', {detail = 'on_hand would leave 0..' .. MAX_QTY, on_hand = c.on_hand})
end
if new_unav < 0 or new_unav > new_on_hand then
  return fail('invalid', {detail = 'unavailable must stay between 0 and on_hand',
    unavailable = c.unavailable})
end

local delta = {on_hand = new_on_hand - c.on_hand, unavailable = new_unav - c.unavailable}
c.on_hand, c.unavailable = new_on_hand, new_unav
local ctx = {ts = now_ms(), tenant = tenant, channel = channel, ref = req.idempotency_key,
  key = 'adjust:' .. req.idempotency_key, reason = req.reason or ''}
cell_write(c)
if created then redis.call('SADD', prefix .. 'skus', req.sku) end
emit(outbox, ctx, 'adjust', c, delta)
local reply = cjson.encode({sku = req.sku, location = req.location, after = {
  on_hand = c.on_hand, reserved = c.reserved, committed = c.committed,
  unavailable = c.unavailable, safety = c.safety, available = available(c)}})
idem_store(idem_key, req.fp, reply, req.idem_ttl_ms)
return {'ok', reply, 0}
