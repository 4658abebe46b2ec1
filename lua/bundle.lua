-- bundle: define, replace or delete a bundle (kit): a SKU sold as components with quantities.
-- A bundle has no stock cells: its available is derived from its components' cells, and
-- every script that takes lines expands a bundle line into component lines (expand_bundles).
-- Bounded to one level: a component is a plain SKU (never a bundle), and a SKU that has cells
-- or is a component of another bundle cannot become one.
-- The definition and the reverse index (component -> bundles) change in this one call.
-- Channels re-push the bundle: one `bundle` event per location where any of its old or new
-- components has a cell (no delta: it moves no unit; the propagation worker marks the
-- bundle's targets there, and the push derives the value from the components).
-- KEYS[1] outbox stream
-- ARGV: common; request = {sku, components = [[sku, qty], ...] (empty: delete),
--   max_components}
-- Reply: {"ok", {sku, components = [{sku, qty}]}, replayed (1 when nothing changed)}
-- Errors: invalid, bundle_conflict (the SKU has stock cells or is a component; a component
--   is a bundle), unknown_sku (delete of a SKU that is no bundle)
local outbox = KEYS[1]
local tenant, prefix, req, channel = ARGV[1], ARGV[2], cjson.decode(ARGV[3]), ARGV[4]
local sku, comps = req.sku, req.components
if not is_name(sku) or type(comps) ~= 'table' or #comps > req.max_components then
  return fail('invalid', {detail = 'a bundle needs a sku and at most ' .. req.max_components
    .. ' components'})
end
local seen = {}
for _, comp in ipairs(comps) do
  local c, q = line_parts(comp)
  if not is_name(c) or not is_count(q, 1) or c == sku or seen[c] then
    return fail('invalid', {detail = 'each component is a distinct other sku with a qty >= 1'})
  end
  seen[c] = true
end

local bkey = bundles_key(prefix)
local old_raw = redis.call('HGET', bkey, sku)
local new_raw = #comps > 0 and cjson.encode(comps) or nil
if #comps == 0 and not old_raw then return fail('unknown_sku', {sku = sku}) end
local function reply(raw)
  local out = {}
  for i, comp in ipairs(raw and cjson.decode(raw) or {}) do
    out[i] = {sku = comp[1], qty = comp[2]}
  end
  -- cjson encodes an empty table as {}: leave the field out (the reader defaults it to []).
  return cjson.encode({sku = sku, components = #out > 0 and out or nil})
end
if old_raw == new_raw then return {'ok', reply(old_raw), 1} end

if #comps > 0 then
  if redis.call('EXISTS', stock_key(prefix, sku)) == 1 then
    return fail('bundle_conflict', {detail = 'the sku has stock cells of its own', sku = sku})
  end
  if redis.call('EXISTS', bundled_key(prefix, sku)) == 1 then
    return fail('bundle_conflict', {detail = 'the sku is a component of another bundle',
      sku = sku})
  end
  for _, comp in ipairs(comps) do
    if redis.call('HEXISTS', bkey, comp[1]) == 1 then
      return fail('bundle_conflict', {detail = 'a component cannot be a bundle', sku = comp[1]})
    end
  end
end

-- Every check passed: write.
local locs, touched = {}, {}
local function touch(raw)
  for _, comp in ipairs(raw and cjson.decode(raw) or {}) do
    if not touched[comp[1]] then
      touched[comp[1]] = true
      for _, f in ipairs(redis.call('HKEYS', stock_key(prefix, comp[1]))) do
        local loc = string.match(f, '^(.*)|on_hand$')
        if loc then locs[loc] = true end
      end
    end
  end
end
touch(old_raw)
touch(new_raw)
for _, comp in ipairs(old_raw and cjson.decode(old_raw) or {}) do
  redis.call('SREM', bundled_key(prefix, comp[1]), sku)
end
if new_raw then
  redis.call('HSET', bkey, sku, new_raw)
  for _, comp in ipairs(comps) do redis.call('SADD', bundled_key(prefix, comp[1]), sku) end
else
  redis.call('HDEL', bkey, sku)
end
local ctx = {ts = now_ms(), tenant = tenant, channel = channel, ref = sku,
  key = 'bundle:' .. sku, reason = new_raw and ('bundle defined: ' .. new_raw) or 'bundle deleted'}
for _, loc in ipairs(ordered(locs)) do
  emit(outbox, ctx, 'bundle', {sku = sku, loc = loc}, {})
end
return {'ok', reply(new_raw), 0}
