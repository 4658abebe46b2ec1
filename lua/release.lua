-- release: give a live hold's units back to available (shopper emptied the cart).
-- KEYS[1] outbox stream, KEYS[2] hold record, KEYS[3] expiry index
-- ARGV: common; request = {hold_id}
-- Reply: {"ok", {hold_id, status}, replayed}; releasing an already released or expired hold
--   answers the same with replayed = 1.
-- Errors: hold_not_found, hold_committed {order_id}
local outbox, hold_key, expiry_key = KEYS[1], KEYS[2], KEYS[3]
local tenant, prefix, req, channel = ARGV[1], ARGV[2], cjson.decode(ARGV[3]), ARGV[4]

local status, lines_json, customer, order_id =
  unpack(redis.call('HMGET', hold_key, 'status', 'lines', 'customer', 'order_id'))
if not status then return fail('hold_not_found', {hold_id = req.hold_id}) end
if status == 'committed' then
  return fail('hold_committed', {hold_id = req.hold_id, order_id = order_id})
end
if status ~= 'held' then
  return {'ok', cjson.encode({hold_id = req.hold_id, status = status}), 1}
end

local lines = cjson.decode(lines_json)
local cells = {}
local changes = hold_give_back(cells, prefix, lines)
local ctx = {ts = now_ms(), tenant = tenant, channel = channel, ref = req.hold_id,
  key = 'release:' .. req.hold_id, reason = 'cart released'}
for _, ch in ipairs(changes) do
  cell_write(ch[1], 'reserved')
  emit(outbox, ctx, 'release', ch[1], ch[2])
end
customer_give_back(prefix, customer, lines)
redis.call('HSET', hold_key, 'status', 'released')
hold_closed(hold_key)
redis.call('ZREM', expiry_key, req.hold_id)
return {'ok', cjson.encode({hold_id = req.hold_id, status = 'released'}), 0}
