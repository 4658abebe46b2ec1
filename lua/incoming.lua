-- incoming: record stock expected at locations (a purchase order, a transfer). Nothing
-- physical moves: each line's units are open incoming at its cell (incoming_key), which the
-- stock view shows and pre-order selling may promise against (can_take). A cell that does
-- not exist yet is created at zero, as the first adjust creates one: a purchase order for a
-- new product is its first appearance.
-- KEYS[1] outbox stream, KEYS[2] the incoming record, KEYS[3] the index of incoming records
-- ARGV: common; request = {incoming_id, fp, kind, reference, expected_ms, expected_date,
--   max_lines, lines = [[sku, location, qty]]}
-- Reply: {"ok", record, replayed}; record = {incoming_id, kind, reference, expected_date,
--   expected_at_ms, status, created_at_ms, receipts, lines = [{sku, location, qty, received,
--   open}]}
-- Errors: invalid, idempotency_conflict, bundle_conflict
local outbox, rec_key, index_key = KEYS[1], KEYS[2], KEYS[3]
local tenant, prefix, req, channel = ARGV[1], ARGV[2], cjson.decode(ARGV[3]), ARGV[4]

local fp, record = unpack(redis.call('HMGET', rec_key, 'fp', 'record'))
if fp then
  if fp ~= req.fp then
    return fail('idempotency_conflict', {detail = 'incoming_id reused with a different request'})
  end
  return {'ok', record, 1}
end
if not is_id(req.incoming_id) or type(req.lines) ~= 'table' or #req.lines == 0
  or #req.lines > req.max_lines or type(req.expected_ms) ~= 'number'
  or req.expected_ms < 0 or type(req.kind) ~= 'string' or type(req.reference) ~= 'string' then
  return fail('invalid', {detail = 'incoming needs an id, an expected date and 1 to '
    .. req.max_lines .. ' lines'})
end
-- One line per cell: the same SKU and location twice is summed.
local merged, order = {}, {}
for _, line in ipairs(req.lines) do
  local sku, loc, qty = line_parts(line)
  if not is_name(sku) or not is_name(loc) or not is_count(qty, 1) then
    return fail('invalid', {detail = 'each line needs a sku, a location and a positive qty'})
  end
  -- A bundle has no cells (lua/bundle.lua): its components are what a supplier delivers.
  if redis.call('HEXISTS', bundles_key(prefix), sku) == 1 then
    return fail('bundle_conflict', {sku = sku,
      detail = 'a bundle has no stock of its own; expect its components'})
  end
  local id = sku .. '\0' .. loc
  if not merged[id] then
    merged[id] = {sku = sku, location = loc, qty = 0, received = 0, open = 0}
    order[#order + 1] = merged[id]
  end
  merged[id].qty = merged[id].qty + qty
  if merged[id].qty > MAX_QTY then return fail('invalid', {detail = 'qty out of range'}) end
end

local ts = now_ms()
local ctx = {ts = ts, tenant = tenant, channel = channel, ref = req.incoming_id,
  key = 'incoming:' .. req.incoming_id, reason = req.kind .. ' ' .. req.reference}
local cells = {}
for _, ln in ipairs(order) do
  ln.open = ln.qty
  local c = cell_read(cells, prefix, ln.sku, ln.location)
  if not c then
    c = {key = stock_key(prefix, ln.sku), sku = ln.sku, loc = ln.location, on_hand = 0,
      reserved = 0, committed = 0, unavailable = 0, safety = 0, backorder_limit = 0}
    cell_write(c)
    redis.call('SADD', prefix .. 'skus', ln.sku)
  end
  redis.call('HSET', incoming_key(prefix, ln.sku), ln.location .. '|' .. req.incoming_id,
    ln.open .. '|' .. req.expected_ms)
  emit(outbox, ctx, 'incoming', c, {incoming = ln.open})
end
record = cjson.encode({incoming_id = req.incoming_id, kind = req.kind,
  reference = req.reference, expected_date = req.expected_date,
  expected_at_ms = req.expected_ms, status = 'open', created_at_ms = ts, receipts = 0,
  lines = order})
redis.call('HSET', rec_key, 'fp', req.fp, 'record', record, 'status', 'open')
redis.call('ZADD', index_key, ts, req.incoming_id)
return {'ok', record, 0}
