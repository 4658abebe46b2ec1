-- incoming_cancel: the purchase order or transfer will not come. Every line's open units
-- close (one `incoming` event {incoming = -open} per cell that had any); units already
-- received stay on hand. Pre-order promises the closed units covered may now be uncovered:
-- workers/preorders.py raises preorder_at_risk from the event, naming the orders.
-- Cancelling a cancelled record answers the same again; a record already fully received or
-- closed has nothing left to cancel.
-- KEYS[1] outbox stream, KEYS[2] the incoming record
-- ARGV: common; request = {incoming_id}
-- Reply: {"ok", record, replayed}
-- Errors: incoming_not_found, incoming_closed {status}
local outbox, rec_key = KEYS[1], KEYS[2]
local tenant, prefix, req, channel = ARGV[1], ARGV[2], cjson.decode(ARGV[3]), ARGV[4]

local record_json, status = unpack(redis.call('HMGET', rec_key, 'record', 'status'))
if not record_json then return fail('incoming_not_found', {incoming_id = req.incoming_id}) end
if status == 'cancelled' then return {'ok', record_json, 1} end
if status ~= 'open' then
  return fail('incoming_closed', {incoming_id = req.incoming_id, status = status})
end
local record = cjson.decode(record_json)
local ctx = {ts = now_ms(), tenant = tenant, channel = channel, ref = req.incoming_id,
  key = 'incoming_cancel:' .. req.incoming_id, reason = 'incoming cancelled'}
local cells = {}
for _, ln in ipairs(record.lines) do
  if ln.open > 0 then
    local c = cell_read(cells, prefix, ln.sku, ln.location) or {sku = ln.sku, loc = ln.location}
    emit(outbox, ctx, 'incoming', c, {incoming = -ln.open})
    redis.call('HDEL', incoming_key(prefix, ln.sku), ln.location .. '|' .. req.incoming_id)
    ln.open = 0
  end
end
record.status = 'cancelled'
record_json = cjson.encode(record)
redis.call('HSET', rec_key, 'record', record_json, 'status', 'cancelled')
return {'ok', record_json, 0}
