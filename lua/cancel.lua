-- cancel: an order is called off; its open (unshipped) units return to available.
-- KEYS[1] outbox stream, KEYS[2] order record
-- ARGV: common; request = {order_id, window_ms, tombstone, state_ms (the body's modification
--   time; 0 when unknown): a cancel older than the order's latest state (a re-opened
--   WooCommerce order's old `failed` body) changes nothing}
-- Reply: {"ok", {order_id, lines = [{sku, location, qty}]}, replayed}
-- Errors: order_not_found (unless `tombstone`: a channel's signed cancel of an order not seen
--   yet records the order as cancelled, so its late create commits nothing)
local outbox, order_key = KEYS[1], KEYS[2]
local tenant, prefix, req, channel = ARGV[1], ARGV[2], cjson.decode(ARGV[3]), ARGV[4]

local status, lines_json, cancel_reply, rec_state =
  unpack(redis.call('HMGET', order_key, 'status', 'lines', 'cancel_reply', 'state_ms'))
local state_ms = tonumber(req.state_ms) or 0
if not status and req.tombstone == true and is_id(req.order_id) then
  local reply = cjson.encode({order_id = req.order_id})
  redis.call('HSET', order_key, 'status', 'cancelled', 'fp', 'cancelled', 'reply', reply,
    'cancel_reply', reply, 'lines', '[]', 'channel', channel, 'state_ms', state_ms, 'kits', 1)
  redis.call('PEXPIRE', order_key, req.window_ms)
  return {'ok', reply, 0}
end
if not status then return fail('order_not_found', {order_id = req.order_id}) end
if status == 'cancelled' then
  return {'ok', cancel_reply or cjson.encode({order_id = req.order_id}), 1}
end
if state_ms > 0 and state_ms < (tonumber(rec_state) or 0) then
  return {'ok', cjson.encode({order_id = req.order_id}), 1}
end

local order_lines = cjson.decode(lines_json)
local ctx = {ts = now_ms(), tenant = tenant, channel = channel, ref = req.order_id,
  key = 'cancel:' .. req.order_id, reason = 'order cancelled'}
local cells, returned, moves, kit_own = {}, {}, {by = {}}, {}
for _, ol in ipairs(order_lines) do
  if ol.open > 0 then
    local c = cell_read(cells, prefix, ol.sku, ol.location)
    local x = math.min(ol.open, c.committed)
    c.committed = c.committed - x
    moves_add(moves, c, {committed = -x}, 'cancel')
    -- A kit's units were sold on the channel's bundle listing: its own move is there.
    if kit_key(ol.bundle, ol.def) ~= '' then
      kit_own_add(kit_own, ol, ol.sku, ol.location, x, ol.def)
    else
      channel_own(prefix, channel, ol.sku, ol.location, -x)
    end
    returned[#returned + 1] = {sku = ol.sku, location = ol.location, qty = ol.open}
    -- Remembered so that the channel's cancel-type refund of these units (Shopify sends one
    -- with its orders/cancelled) finds them already back on sale instead of taking shipped ones.
    ol.cancelled = (ol.cancelled or 0) + ol.open
    ol.open = 0
  end
end
kit_own_book(prefix, channel, kit_own, -1)
for _, m in ipairs(moves) do cell_write(m.c, 'committed') end
moves_emit(outbox, ctx, moves)
-- cjson encodes an empty table as {}: leave the field out and let the reader default it.
local reply = cjson.encode({order_id = req.order_id, lines = #returned > 0 and returned or nil})
redis.call('HSET', order_key, 'status', 'cancelled', 'cancel_reply', reply,
  'lines', cjson.encode(order_lines), 'state_ms', math.max(state_ms, tonumber(rec_state) or 0))
order_keep(order_key, order_lines, req.window_ms)
return {'ok', reply, 0}
