-- fulfil: shipped units leave the building: committed -= qty, on_hand -= qty.
-- KEYS[1] outbox stream, KEYS[2] order record, KEYS[3] idempotency record (fulfilment id)
-- ARGV: common; request = {order_id, fulfilment_id, fp, idem_ttl_ms, window_ms,
--   lines = [[sku, location or "", qty], ...]}; no lines means every open unit of the order.
-- Reply: {"ok", {order_id, fulfilment_id, lines = [{sku, location, qty}]}, replayed}
-- A line naming a bundle ships the units the order's kits took (expand_for_record); a plain
-- line ships loose units only (entry_matches).
-- Errors: order_not_found, invalid (more than the order has open), idempotency_conflict
local outbox, order_key, idem_key = KEYS[1], KEYS[2], KEYS[3]
local tenant, prefix, req, channel = ARGV[1], ARGV[2], cjson.decode(ARGV[3]), ARGV[4]

local replay = idem_lookup(idem_key, req.fp)
if replay then return replay end
local lines_json, done, kits = unpack(redis.call('HMGET', order_key, 'lines',
  'done:' .. req.fulfilment_id, 'kits'))
if not lines_json then return fail('order_not_found', {order_id = req.order_id}) end
-- The order record keeps the fulfilment ids it applied for as long as it lives (the return
-- window), far past the idempotency TTL: a body replayed weeks later ships nothing again.
if done then return idem_match(done, req.fp) end
local order_lines = cjson.decode(lines_json)

-- Pair each requested quantity with the order lines it ships from, before writing anything.
local takes = {}
-- A line naming a bundle ships the components the order's kits took (expand_for_record):
-- whatever the bundle's definition is now, or if it was deleted.
local wanted, bundle_note = expand_for_record(prefix, req.lines or {}, order_lines,
  kits == '1', function(ol) return ol.open end)
if #wanted == 0 then
  for i, ol in ipairs(order_lines) do
    if ol.open > 0 then takes[#takes + 1] = {i, ol.open} end
  end
else
  local open = {}
  for i, ol in ipairs(order_lines) do open[i] = ol.open end
  for _, w in ipairs(wanted) do
    local sku, loc, q = line_parts(w)
    if not is_name(sku) or not is_count(q, 1) then
      return fail('invalid', {detail = 'each line needs a sku and a positive qty'})
    end
    for i, ol in ipairs(order_lines) do
      if q == 0 then break end
      if entry_matches(ol, sku, loc, w) and open[i] > 0 then
        local x = math.min(q, open[i])
        open[i] = open[i] - x
        q = q - x
        takes[#takes + 1] = {i, x}
      end
    end
    if q > 0 then
      return fail('invalid', {detail = 'fulfilment exceeds the open quantity', sku = sku})
    end
  end
end

local ctx = {ts = now_ms(), tenant = tenant, channel = channel, ref = req.order_id,
  key = 'fulfil:' .. req.fulfilment_id, reason = 'fulfilled' .. bundle_note}
local cells, shipped, moves = {}, {}, {by = {}}
for _, t in ipairs(takes) do
  local ol, x = order_lines[t[1]], t[2]
  local c = cell_read(cells, prefix, ol.sku, ol.location)
  local from_committed = math.min(x, c.committed)
  c.committed = c.committed - from_committed
  c.on_hand = math.max(c.on_hand - x, 0)
  -- Entries of one cell (a kit's and a loose part's) are one event.
  moves_add(moves, c, {committed = -from_committed, on_hand = -x}, 'fulfil')
  ol.open = ol.open - x
  ol.fulfilled = ol.fulfilled + x
  shipped[#shipped + 1] = {sku = ol.sku, location = ol.location, qty = x}
end
for _, m in ipairs(moves) do cell_write(m.c) end
moves_emit(outbox, ctx, moves)
redis.call('HSET', order_key, 'lines', cjson.encode(order_lines))
order_keep(order_key, order_lines, req.window_ms)
-- cjson encodes an empty table as {}: leave the field out and let the reader default it.
local reply = cjson.encode({order_id = req.order_id, fulfilment_id = req.fulfilment_id,
  lines = #shipped > 0 and shipped or nil})
idem_store(idem_key, req.fp, reply, req.idem_ttl_ms)
redis.call('HSET', order_key, 'done:' .. req.fulfilment_id, req.fp .. '\n' .. reply)
return {'ok', reply, 0}
