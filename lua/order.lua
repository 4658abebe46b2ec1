-- order: a channel order without a prior hold commits straight from available.
-- The sale already happened on the channel, so lines are judged one by one: a line that can
-- be covered commits; one that cannot is refused as an oversell_rejected event (never as
-- negative stock) and reported in the reply for an alert.
-- KEYS[1] outbox stream, KEYS[2] order record
-- ARGV: common; request = {order_id, fp, idem_ttl_ms, lines = [[sku, location, qty], ...]}
-- Reply: {"ok", {order_id, lines = [{sku, location, qty, status}]}, replayed};
--   line status is committed, oversell_rejected or unknown_sku.
-- Errors: invalid, idempotency_conflict
local outbox, order_key = KEYS[1], KEYS[2]
local tenant, prefix, req, channel = ARGV[1], ARGV[2], cjson.decode(ARGV[3]), ARGV[4]

local fp, reply = unpack(redis.call('HMGET', order_key, 'fp', 'reply'))
if fp then
  if fp ~= req.fp then
    return fail('idempotency_conflict', {detail = 'order_id reused with a different order'})
  end
  return {'ok', reply, 1}
end
if not is_name(req.order_id) or type(req.lines) ~= 'table' or #req.lines == 0 then
  return fail('invalid', {detail = 'order needs an order_id and at least one line'})
end
for _, line in ipairs(req.lines) do
  local sku, loc, q = line_parts(line)
  if not is_name(sku) or not is_name(loc) or not is_count(q, 1) then
    return fail('invalid', {detail = 'each line needs a sku, a location and a positive qty'})
  end
end

local ts = now_ms()
local ctx = {ts = ts, tenant = tenant, channel = channel, ref = req.order_id,
  key = 'order:' .. req.order_id, reason = 'channel order'}
local cells, results, order_lines = {}, {}, {}
for _, line in ipairs(req.lines) do
  local sku, loc, q = line[1], line[2], line[3]
  local c = cell_read(cells, prefix, sku, loc)
  local status = 'committed'
  if not c then
    status = 'unknown_sku'
  elseif not can_take(c, q) then
    status = 'oversell_rejected'
    emit(outbox, ctx, 'oversell_rejected', c, {},
      'requested ' .. q .. ', available ' .. math.max(available(c), 0))
  else
    c.committed = c.committed + q
    cell_write(c, 'committed')
    emit(outbox, ctx, 'commit', c, {committed = q})
    order_lines[#order_lines + 1] = {sku = sku, location = loc, qty = q, open = q,
      fulfilled = 0, restocked = 0}
  end
  results[#results + 1] = {sku = sku, location = loc, qty = q, status = status}
end
reply = cjson.encode({order_id = req.order_id, lines = results})
redis.call('HSET', order_key, 'status', 'open', 'fp', req.fp, 'reply', reply,
  'lines', cjson.encode(order_lines), 'channel', channel)
redis.call('PEXPIRE', order_key, req.idem_ttl_ms)
return {'ok', reply, 0}
