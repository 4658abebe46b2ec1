-- moved: a compare-and-set channel's count moved on its own (its push came back stale: a sale
-- whose order webhook has not landed yet, or a person's edit in its admin). The units it
-- dropped that nothing explains yet are set aside for it in `reserved`, so no other channel
-- sells them meanwhile; its order for them takes them back out (order.lua); a drop that stays
-- unexplained is alerted by reconciliation and never given back blindly.
--
-- Per target the channel's bookkeeping lives in its compare-and-set hash (KEYS[2], see
-- workers.propagation): "k|<sku>|<loc>" the count it was known to hold, "o|..." units of its
-- own orders applied since, "p|..." units set aside for it, "t|..." since when (ms).
-- What it should hold by what Stockgate knows is known - own; anything below that it sold on
-- its own; anything above (a restock on its side) first gives set-aside units back.
-- A line with `clear` gives every set-aside unit back (its count report was judged and
-- applied to stock: the drop is explained).
-- Units are set aside only from available: a drop beyond it was sold twice already, and the
-- channel's order for it is refused as an oversell when it lands (and alerted there).
-- KEYS[1] outbox stream, KEYS[2] the channel's compare-and-set hash
-- ARGV: common; request = {lines = [[sku, location, actual]] | [[sku, location, nil, true]]}
-- Reply: {"ok", {lines = [{sku, location, pending}]}, 0}
local outbox, cas_key = KEYS[1], KEYS[2]
local tenant, prefix, req, channel = ARGV[1], ARGV[2], cjson.decode(ARGV[3]), ARGV[4]
if channel == '' or type(req.lines) ~= 'table' then
  return fail('invalid', {detail = 'a channel and lines are required'})
end
for _, line in ipairs(req.lines) do
  local sku, loc, actual = line_parts(line)
  if not is_name(sku) or not is_name(loc) or (line[4] ~= true and not is_count(actual, 0)) then
    return fail('invalid', {detail = 'each line is [sku, location, count >= 0]'})
  end
end

local ts = now_ms()
local cells, out = {}, {}
local ctx = {ts = ts, tenant = tenant, channel = channel, ref = 'moved:' .. channel,
  key = 'moved:' .. channel .. ':' .. ts}
for _, line in ipairs(req.lines) do
  local sku, loc, actual = line_parts(line)
  local ref = sku .. '|' .. loc
  local pending = tonumber(redis.call('HGET', cas_key, 'p|' .. ref) or '0')
  local target = 0
  if line[4] ~= true then
    local known = tonumber(redis.call('HGET', cas_key, 'k|' .. ref) or actual)
    local own = tonumber(redis.call('HGET', cas_key, 'o|' .. ref) or '0')
    target = math.max(pending + (known - own) - actual, 0)
    redis.call('HSET', cas_key, 'k|' .. ref, actual)
    redis.call('HDEL', cas_key, 'o|' .. ref)
  end
  local c = cell_read(cells, prefix, sku, loc)
  if c and target > pending then
    local x = math.min(target - pending, math.max(available(c), 0))
    if x > 0 then
      c.reserved = c.reserved + x
      pending = pending + x
      emit(outbox, ctx, 'hold', c, {reserved = x},
        channel .. ' sold on its own; set aside until its order arrives')
    end
  elseif c and target < pending then
    local x = math.min(pending - target, c.reserved)
    c.reserved = c.reserved - x
    pending = pending - x
    emit(outbox, ctx, 'release', c, {reserved = -x}, channel .. ' count explained')
  elseif not c then
    pending = 0
  end
  if pending > 0 then
    redis.call('HSET', cas_key, 'p|' .. ref, pending)
    if redis.call('HEXISTS', cas_key, 't|' .. ref) == 0 then
      redis.call('HSET', cas_key, 't|' .. ref, ts)
    end
  else
    redis.call('HDEL', cas_key, 'p|' .. ref, 't|' .. ref)
  end
  out[#out + 1] = {sku = sku, location = loc, pending = pending}
end
for _, c in pairs(cells) do
  if c then cell_write(c, 'reserved') end
end
return {'ok', cjson.encode({lines = out}), 0}
