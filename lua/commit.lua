-- commit: the storefront's checkout claims its hold; the reserved units become committed.
-- A hold is claimed once: by this commit or by one channel order naming it (order.lua).
-- A hold past its TTL is dead even before the sweep: it is expired here (its units go back to
-- sale) and the commit answers hold_not_found.
-- Explicit link: when the order id is a channel order's reference that already has a record
-- (the channel's order webhook landed first, naming no hold), the hold is that sale. The
-- units the order asked for but was refused (oversell_rejected: often because this very hold
-- reserved them) are the hold's units: they move reserved -> committed into the order's
-- record. The rest of the hold was counted by the order already and goes back to sale.
-- KEYS[1] outbox stream, KEYS[2] hold record, KEYS[3] expiry index, KEYS[4] order record
-- ARGV: common; request = {hold_id, order_id, window_ms}
-- Reply: {"ok", {order_id, hold_id, lines}, replayed}
-- Errors: hold_not_found (unknown, released or expired), idempotency_conflict (the hold was
--   claimed by another order, or the order id names another storefront order)
local outbox, hold_key, expiry_key, order_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local tenant, prefix, req, channel = ARGV[1], ARGV[2], cjson.decode(ARGV[3]), ARGV[4]

local status, lines_json, expires_at, order_id, customer, tags_json = unpack(redis.call(
  'HMGET', hold_key, 'status', 'lines', 'expires_at', 'order_id', 'customer', 'tags'))
if not is_id(req.order_id) then return fail('invalid', {detail = 'order_id is required'}) end
if status == 'committed' then
  if order_id ~= req.order_id then
    return fail('idempotency_conflict', {detail = 'hold already claimed by another order'})
  end
  return {'ok', cjson.encode({order_id = order_id, hold_id = req.hold_id,
    lines = cjson.decode(lines_json)}), 1}
end
local ts = now_ms()
if status == 'held' and tonumber(expires_at) <= ts then
  expire_hold(outbox, tenant, prefix, expiry_key, {}, req.hold_id, lines_json, customer, ts)
  return fail('hold_not_found', {hold_id = req.hold_id, status = 'expired'})
end
if status ~= 'held' then
  return fail('hold_not_found', {hold_id = req.hold_id, status = status or 'unknown'})
end
local rec_fp, rec_channel, rec_status, rec_reply, rec_lines, rec_linked, rec_kits = unpack(
  redis.call('HMGET', order_key, 'fp', 'channel', 'status', 'reply', 'lines', 'linked', 'kits'))
if rec_fp and (rec_channel == nil or rec_channel == '') then
  return fail('idempotency_conflict', {detail = 'order_id already used by another order'})
end

local lines = cjson.decode(lines_json)
-- The hold's bundle tags go onto the order's entries (a record written before tags existed
-- keeps untagged entries: its bundle lines match untagged units, see expand_for_record).
local tagged = not rec_fp or rec_kits == '1'
local tagged_lines = hold_tagged(cjson.decode(lines_json), tagged and tags_json or nil)
local cells = {}
for _, line in ipairs(lines) do
  local c = cell_read(cells, prefix, line[1], line[2])
  if not c then return fail('unknown_sku', {sku = line[1], location = line[2]}) end
end
local reply = cjson.encode({order_id = req.order_id, hold_id = req.hold_id, lines = lines})
redis.call('HSET', hold_key, 'status', 'committed', 'order_id', req.order_id)
hold_closed(hold_key)
redis.call('ZREM', expiry_key, req.hold_id)
if rec_fp then
  -- Refused units per SKU, less those an earlier linked hold already filled.
  local refused, linked = {}, rec_linked and cjson.decode(rec_linked) or {}
  if rec_status ~= 'cancelled' then
    for _, ln in ipairs(cjson.decode(rec_reply).lines or {}) do
      if ln.status == 'oversell_rejected' then refused[ln.sku] = (refused[ln.sku] or 0) + ln.qty end
    end
  end
  for sku, n in pairs(linked) do refused[sku] = (refused[sku] or 0) - n end
  local ctx = {ts = ts, tenant = tenant, channel = channel, ref = req.order_id,
    key = 'commit:' .. req.hold_id, reason = 'hold linked to its channel order'}
  local entries, moves = cjson.decode(rec_lines), {by = {}}
  for i, line in ipairs(lines) do
    local c = cell_read(cells, prefix, line[1], line[2])
    local x = math.min(line[3], refused[line[1]] or 0)
    local r = math.min(line[3], c.reserved)
    c.reserved = c.reserved - r
    if x > 0 then
      refused[line[1]] = refused[line[1]] - x
      linked[line[1]] = (linked[line[1]] or 0) + x
      c.committed = c.committed + x
      entries[#entries + 1] = tag_entry({sku = line[1], location = line[2], qty = x, open = x,
        fulfilled = 0, restocked = 0}, tagged_lines[i])
      moves_add(moves, c, {reserved = -r, committed = x}, 'commit')
    else
      moves_add(moves, c, {reserved = -r}, 'release')
    end
    cell_write(c, 'reserved', 'committed')
  end
  moves_emit(outbox, ctx, moves)
  redis.call('HSET', order_key, 'lines', cjson.encode(entries))
  if next(linked) then redis.call('HSET', order_key, 'linked', cjson.encode(linked)) end
  order_keep(order_key, entries, req.window_ms)
  return {'ok', reply, 0}
end

local ctx = {ts = ts, tenant = tenant, channel = channel, ref = req.order_id,
  key = 'commit:' .. req.hold_id, reason = 'order placed from hold'}
-- A hold's kit and loose lines of one cell are one event (one per changed cell).
local order_lines, moves = {}, {by = {}}
for i, line in ipairs(lines) do
  local c = cell_read(cells, prefix, line[1], line[2])
  local q = line[3]
  local from_reserved = math.min(q, c.reserved)
  c.reserved = c.reserved - from_reserved
  c.committed = c.committed + q
  cell_write(c, 'reserved', 'committed')
  moves_add(moves, c, {reserved = -from_reserved, committed = q}, 'commit')
  order_lines[#order_lines + 1] = tag_entry({sku = line[1], location = line[2], qty = q,
    open = q, fulfilled = 0, restocked = 0}, tagged_lines[i])
end
moves_emit(outbox, ctx, moves)
redis.call('HSET', order_key, 'status', 'open', 'reply', reply, 'fp', 'hold:' .. req.hold_id,
  'lines', cjson.encode(order_lines), 'channel', channel, 'hold_id', req.hold_id, 'kits', 1)
order_keep(order_key, order_lines, req.window_ms)
return {'ok', reply, 0}
