-- restock: a refund puts units back on sale. Units of the order not yet shipped leave
-- committed; shipped units that come back are added to on_hand (never more than shipped).
-- Without an order id (a return of unknown origin) every unit is added to on_hand.
-- KEYS[1] outbox stream, KEYS[2] idempotency record (refund id), KEYS[3] order record
-- ARGV: common; request = {refund_id, order_id or "", fp, idem_ttl_ms, window_ms,
--   take_from ("open": unshipped units only, a Shopify `cancel` restock; "shipped": returned
--   units only, `return`; "any": unshipped first), lines = [[sku, location or "", qty], ...]}
-- Reply: {"ok", {refund_id, lines = [{sku, location, qty, restocked}]}, replayed}
--   (restocked < qty when the order had fewer units to give back)
-- Errors: invalid, order_not_found, unknown_sku, idempotency_conflict
local outbox, idem_key, order_key = KEYS[1], KEYS[2], KEYS[3]
local tenant, prefix, req, channel = ARGV[1], ARGV[2], cjson.decode(ARGV[3]), ARGV[4]

local replay = idem_lookup(idem_key, req.fp)
if replay then return replay end
if type(req.lines) ~= 'table' or #req.lines == 0 then
  return fail('invalid', {detail = 'restock needs at least one line'})
end
local order_lines, tagged
if req.order_id ~= '' then
  local lines_json, done, kits = unpack(redis.call('HMGET', order_key, 'lines',
    'done:' .. req.refund_id, 'kits'))
  if not lines_json then return fail('order_not_found', {order_id = req.order_id}) end
  -- Refund ids applied to the order live as long as its record (see fulfil.lua).
  if done then return idem_match(done, req.fp) end
  order_lines = cjson.decode(lines_json)
  tagged = kits == '1'
end
local open_ok, shipped_ok = req.take_from ~= 'shipped', req.take_from ~= 'open'
-- A line naming a bundle restocks the components the order's kits took, never today's
-- definition (expand_for_record): a redefined or deleted bundle gives back what was sold,
-- and kits beyond those sold never take loose parts. The reply lists the component lines.
-- Without an order (a return of unknown origin), today's definition is all there is.
local lines, bundle_note
if order_lines then
  lines, bundle_note = expand_for_record(prefix, req.lines, order_lines, tagged, function(ol)
    return (open_ok and ol.open + (ol.cancelled or 0) or 0)
      + (shipped_ok and ol.fulfilled - ol.restocked or 0)
  end)
else
  lines, bundle_note = expand_bundles(prefix, req.lines)
end

-- Plan every line against the order and the cells first; write only when all are valid.
local cells, plan = {}, {}
for _, w in ipairs(lines) do
  local sku, loc, q = line_parts(w)
  if not is_name(sku) or not is_count(q, 1) then
    return fail('invalid', {detail = 'each line needs a sku and a positive qty'})
  end
  if order_lines then
    local left = q
    for _, ol in ipairs(order_lines) do
      if entry_matches(ol, sku, loc, w) and left > 0 then
        local from_open = open_ok and math.min(left, ol.open) or 0
        -- Units the order's cancel already put back count as restocked, changing nothing,
        -- before any shipped unit is taken for them.
        local from_cancelled = open_ok and math.min(left - from_open, ol.cancelled or 0) or 0
        local from_shipped = shipped_ok and math.min(left - from_open - from_cancelled,
          ol.fulfilled - ol.restocked) or 0
        if from_cancelled > 0 then
          ol.cancelled = ol.cancelled - from_cancelled
          left = left - from_cancelled
        end
        if from_open + from_shipped > 0 then
          ol.open = ol.open - from_open
          ol.restocked = ol.restocked + from_shipped
          left = left - from_open - from_shipped
          plan[#plan + 1] = {sku = sku, loc = ol.location, open = from_open,
            shipped = from_shipped, line = w, entry = ol}
        end
      end
    end
    w.restocked = q - left
  else
    if not is_name(loc) then
      return fail('invalid', {detail = 'a restock without an order needs a location'})
    end
    if not cell_read(cells, prefix, sku, loc) then
      return fail('unknown_sku', {sku = sku, location = loc})
    end
    plan[#plan + 1] = {sku = sku, loc = loc, open = 0, shipped = q}
    w.restocked = q
  end
end

local ctx = {ts = now_ms(), tenant = tenant, channel = channel, ref = req.refund_id,
  key = 'restock:' .. req.refund_id, reason = 'refund restock' .. bundle_note}
local moves, kit_own = {by = {}}, {}
for _, p in ipairs(plan) do
  local c = cell_read(cells, prefix, p.sku, p.loc)
  if c then
    local from_committed = math.min(p.open, c.committed)
    c.committed = c.committed - from_committed
    c.on_hand = c.on_hand + p.shipped
    moves_add(moves, c, {committed = -from_committed, on_hand = p.shipped}, 'restock')
    -- Units of a kit were the channel's bundle listing's, not its component listing's.
    if p.entry and kit_key(p.entry.bundle, p.entry.def) ~= '' then
      kit_own_add(kit_own, p.entry, p.sku, p.loc, from_committed + p.shipped, p.line[7])
    else
      channel_own(prefix, channel, p.sku, p.loc, -(from_committed + p.shipped))
    end
  end
end
kit_own_book(prefix, channel, kit_own, -1)
for _, m in ipairs(moves) do cell_write(m.c) end
moves_emit(outbox, ctx, moves)
if order_lines then
  redis.call('HSET', order_key, 'lines', cjson.encode(order_lines))
end
local results = {}
for _, w in ipairs(lines) do
  results[#results + 1] = {sku = w[1], location = w[2], qty = w[3], restocked = w.restocked}
end
local reply = cjson.encode({refund_id = req.refund_id, lines = results})
idem_store(idem_key, req.fp, reply, req.idem_ttl_ms)
if order_lines then
  redis.call('HSET', order_key, 'done:' .. req.refund_id, req.fp .. '\n' .. reply)
  order_keep(order_key, order_lines, req.window_ms)
end
return {'ok', reply, 0}
