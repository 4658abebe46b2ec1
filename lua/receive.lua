-- receive: units of an incoming record arrived. Each receipt line moves its units into
-- on_hand at its cell and closes up to that many open incoming units; units beyond a line's
-- open quantity are an over-receipt, taken in (they are physically there) and reported.
-- With `close`, whatever a line still has open after this receipt is closed too (a short
-- delivery: the supplier sends no more), which may leave pre-order promises uncovered
-- (workers/preorders.py alerts on it). One event per changed cell: `receive` {on_hand = +q,
-- incoming = -(covered + closed)}, or `incoming` {incoming = -closed} for a cell that only
-- closed. Idempotent per receipt id for the life of the record.
-- KEYS[1] outbox stream, KEYS[2] the incoming record
-- ARGV: common; request = {incoming_id, receipt_id, fp, close, max_lines, max_receipts,
--   lines = [[sku, location, qty]]}
-- Reply: {"ok", {incoming_id, receipt_id, status, over_received, lines = [{sku, location,
--   qty, covered, over, closed}]}, replayed}
-- Errors: invalid, incoming_not_found, incoming_closed {status}, idempotency_conflict
local outbox, rec_key = KEYS[1], KEYS[2]
local tenant, prefix, req, channel = ARGV[1], ARGV[2], cjson.decode(ARGV[3]), ARGV[4]

local record_json, status, seen_fp, seen_reply = unpack(redis.call('HMGET', rec_key, 'record',
  'status', 'r|' .. tostring(req.receipt_id), 'rr|' .. tostring(req.receipt_id)))
if not record_json then return fail('incoming_not_found', {incoming_id = req.incoming_id}) end
if seen_fp then
  if seen_fp ~= req.fp then
    return fail('idempotency_conflict', {detail = 'receipt_id reused with a different receipt'})
  end
  return {'ok', seen_reply, 1}
end
if status ~= 'open' then
  return fail('incoming_closed', {incoming_id = req.incoming_id, status = status})
end
local record = cjson.decode(record_json)
if not is_id(req.receipt_id) or type(req.lines) ~= 'table' or #req.lines > req.max_lines
  or (#req.lines == 0 and not req.close) then
  return fail('invalid', {detail = 'a receipt needs an id and 1 to ' .. req.max_lines
    .. ' lines (none only to close the remainder)'})
end
if record.receipts >= req.max_receipts then
  return fail('invalid', {detail = 'at most ' .. req.max_receipts .. ' receipts per incoming'})
end
local wanted = {}
for _, line in ipairs(req.lines) do
  local sku, loc, qty = line_parts(line)
  if not is_name(sku) or not is_name(loc) or not is_count(qty, 1) then
    return fail('invalid', {detail = 'each line needs a sku, a location and a positive qty'})
  end
  local id = sku .. '\0' .. loc
  wanted[id] = (wanted[id] or 0) + qty
end
local cells, plan = {}, {}
for _, ln in ipairs(record.lines) do
  local id = ln.sku .. '\0' .. ln.location
  local q = wanted[id] or 0
  wanted[id] = nil
  local covered = math.min(q, ln.open)
  local closed = req.close and (ln.open - covered) or 0
  local c = cell_read(cells, prefix, ln.sku, ln.location)
  if not c then
    c = {key = stock_key(prefix, ln.sku), sku = ln.sku, loc = ln.location, on_hand = 0,
      reserved = 0, committed = 0, unavailable = 0, safety = 0, backorder_limit = 0,
      created = true}
    cells[ln.sku .. '\0' .. ln.location] = c
  end
  if c.on_hand + q > MAX_QTY then
    return fail('invalid', {detail = 'on_hand would pass ' .. MAX_QTY, sku = ln.sku})
  end
  plan[#plan + 1] = {ln = ln, c = c, q = q, covered = covered, closed = closed}
end
if next(wanted) ~= nil then
  return fail('invalid', {detail = 'a receipt line names a SKU and location not on this '
    .. 'incoming (receive unexpected units with an adjust)'})
end

-- Every check passed: write.
local ctx = {ts = now_ms(), tenant = tenant, channel = channel, ref = req.incoming_id,
  key = 'receive:' .. req.incoming_id .. ':' .. req.receipt_id, reason = 'receipt'}
local results, over_total, any_open, any_closed = {}, 0, false, false
for _, p in ipairs(plan) do
  local ln, c = p.ln, p.c
  local gone = p.covered + p.closed
  if p.q > 0 then
    c.on_hand = c.on_hand + p.q
    cell_write(c)
    if c.created then redis.call('SADD', prefix .. 'skus', ln.sku) end
    emit(outbox, ctx, 'receive', c, {on_hand = p.q, incoming = -gone})
    if c.reserved + c.committed + c.unavailable <= c.on_hand then
      redis.call('DEL', prefix .. 'promised:' .. ln.sku .. '|' .. ln.location)
    end
  elseif gone > 0 then
    emit(outbox, ctx, 'incoming', c, {incoming = -gone}, 'remainder closed')
  end
  if gone > 0 then
    ln.open = ln.open - gone
    local field = ln.location .. '|' .. req.incoming_id
    if ln.open > 0 then
      redis.call('HSET', incoming_key(prefix, ln.sku), field,
        ln.open .. '|' .. record.expected_at_ms)
    else
      redis.call('HDEL', incoming_key(prefix, ln.sku), field)
    end
  end
  ln.received = ln.received + p.q
  if ln.open > 0 then any_open = true end
  if p.closed > 0 then any_closed = true end
  over_total = over_total + (p.q - p.covered)
  if p.q > 0 or p.closed > 0 then
    results[#results + 1] = {sku = ln.sku, location = ln.location, qty = p.q,
      covered = p.covered, over = p.q - p.covered, closed = p.closed}
  end
end
if not any_open then record.status = any_closed and 'closed' or 'received' end
record.receipts = record.receipts + 1
-- cjson encodes an empty table as {}: a receipt that only closed nothing lists [].
local reply = cjson.encode({incoming_id = req.incoming_id, receipt_id = req.receipt_id,
  status = record.status, over_received = over_total,
  lines = #results > 0 and results or '\0'})
reply = string.gsub(reply, '"\\u0000"', '[]')
redis.call('HSET', rec_key, 'record', cjson.encode(record), 'status', record.status,
  'r|' .. req.receipt_id, req.fp, 'rr|' .. req.receipt_id, reply)
return {'ok', reply, 0}
