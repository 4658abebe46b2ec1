-- hold: reserve every line of a cart for a TTL, all lines or none.
-- Before judging stock it expires up to 50 of the tenant's holds whose TTL has passed (their
-- units go back to sale; a dead hold must not refuse a live cart while the sweep is behind).
-- KEYS[1] outbox stream, KEYS[2] hold record, KEYS[3] expiry index (zset of hold ids)
-- ARGV: common (tenant, prefix, request, channel); request =
--   {hold_id, ttl_ms, idem_ttl_ms, fp, customer?, lines = [[sku, location, qty], ...]}
-- A bundle line holds its components (expand_bundles): the record keeps component lines, so
-- release, expiry and commit give back or commit exactly what was taken, and their bundle
-- tags ("tags"); the reply echoes the lines as asked.
-- Reply: {"ok", {hold_id, expires_at_ms, lines}, replayed}
-- Errors: invalid, unknown_sku {sku, location}, insufficient_stock {sku, location, available},
--   limit_exceeded {sku, limit, already}, idempotency_conflict
local outbox, hold_key, expiry_key = KEYS[1], KEYS[2], KEYS[3]
local tenant, prefix, req, channel = ARGV[1], ARGV[2], cjson.decode(ARGV[3]), ARGV[4]

local fp, reply = unpack(redis.call('HMGET', hold_key, 'fp', 'reply'))
if fp then
  if fp ~= req.fp then
    return fail('idempotency_conflict', {detail = 'hold_id reused with a different request'})
  end
  return {'ok', reply, 1}
end
if not is_id(req.hold_id) or not is_count(req.ttl_ms, 1) or type(req.lines) ~= 'table'
  or #req.lines == 0 then
  return fail('invalid', {detail = 'hold needs a hold_id, a ttl and at least one line'})
end

-- Bundle lines become their component lines here, before every check (see expand_bundles).
local lines, bundle_note = expand_bundles(prefix, req.lines)
for _, line in ipairs(lines) do
  local sku, loc, qty = line_parts(line)
  if not is_name(sku) or not is_name(loc) or not is_count(qty, 1) then
    return fail('invalid', {detail = 'each line needs a sku, a location and a positive qty'})
  end
end

local ts = now_ms()
local cells, wanted, per_sku, order = {}, {}, {}, {}
expire_due(outbox, tenant, prefix, expiry_key, cells, ts, 50)
for _, line in ipairs(lines) do
  local sku, loc, qty = line[1], line[2], line[3]
  local c = cell_read(cells, prefix, sku, loc)
  if not c then return fail('unknown_sku', {sku = sku, location = loc}) end
  -- A cart may name one cell twice: check the sum, not each line alone.
  if not wanted[c] then wanted[c] = 0; order[#order + 1] = c end
  wanted[c] = wanted[c] + qty
  per_sku[sku] = (per_sku[sku] or 0) + qty
end
for _, c in ipairs(order) do
  if not can_take(c, wanted[c]) then
    return fail('insufficient_stock', {sku = c.sku, location = c.loc,
      available = math.max(available(c), 0)})
  end
  -- Taken in memory at once (written only once every check passed): the next cell of the
  -- same SKU then sees this one's pre-sold units against the SKU's one pre-order budget.
  c.reserved = c.reserved + wanted[c]
end
local customer = req.customer
if customer ~= nil and customer ~= cjson.null and customer ~= '' then
  for sku, qty in pairs(per_sku) do
    local limit = tonumber(redis.call('HGET', stock_key(prefix, sku), 'max_per_customer') or '0')
    if limit > 0 then
      local already = tonumber(redis.call('GET', customer_key(prefix, customer, sku)) or '0')
      if already + qty > limit then
        return fail('limit_exceeded', {sku = sku, limit = limit, already = already})
      end
    end
  end
else
  customer = ''
end

-- Every check passed: write.
local expires_at = ts + req.ttl_ms
local ctx = {ts = ts, tenant = tenant, channel = channel, ref = req.hold_id,
  key = 'hold:' .. req.hold_id, reason = 'cart hold' .. bundle_note}
for _, c in ipairs(order) do
  cell_write(c, 'reserved')
  emit(outbox, ctx, 'hold', c, {reserved = wanted[c]})
  preorder_note(prefix, c, 'hold:' .. req.hold_id, wanted[c])
end
if customer ~= '' then
  for sku, qty in pairs(per_sku) do
    local k = customer_key(prefix, customer, sku)
    redis.call('INCRBY', k, qty)
    redis.call('PEXPIRE', k, req.idem_ttl_ms)
  end
end
reply = cjson.encode({hold_id = req.hold_id, expires_at_ms = expires_at, lines = req.lines})
redis.call('HSET', hold_key, 'fp', req.fp, 'reply', reply, 'status', 'held',
  'lines', cjson.encode(bundle_note == '' and req.lines or plain_lines(lines)),
  'expires_at', expires_at, 'customer', customer, 'channel', channel, 'keep_ms', req.idem_ttl_ms,
  -- When it was made: an extension (extend.lua) caps the hold's whole life from here.
  'created_at', ts)
-- A bundle hold keeps which kit each component line came from ("tags", see hold_tags): its
-- commit turns them into the order's tagged entries, so the order's later fulfilment, refund
-- or edit acts on what this hold took, whatever the definition becomes.
local tags = bundle_note ~= '' and hold_tags(lines)
if tags then redis.call('HSET', hold_key, 'tags', cjson.encode(tags)) end
-- No expiry while held: the record is what gives the units back, however long the sweep is
-- down. It gets one (hold_closed) when it leaves `held`, and then outlives that change by the
-- idempotency TTL so that a retried request still gets its first answer.
redis.call('ZADD', expiry_key, expires_at, req.hold_id)
return {'ok', reply, 0}
