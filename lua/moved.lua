-- moved: a compare-and-set channel's count moved on its own (its push came back stale: a sale
-- whose order webhook has not landed yet, or a person's edit in its admin). The units it
-- dropped that nothing explains yet are set aside for it in `reserved`, so no other channel
-- sells them meanwhile; its order for them takes them back out (order.lua); a drop that stays
-- unexplained is alerted by reconciliation and never given back blindly.
--
-- Per target the channel's bookkeeping lives in its compare-and-set hash (KEYS[2], see
-- workers.propagation): "k|<sku>|<loc>" the count it was known to hold, "o|..." units of its
-- own orders applied since, "p|..." units set aside for it, "t|..." since when (ms).
-- What it should hold by what Stockgate knows is known - own (own: its orders less its own
-- cancels and restocks since); anything below that it sold on its own.
-- A count equal to one of `doubts` (values of earlier pushes whose answers never came) is
-- that push having landed, not a move of the channel's: it becomes the known count, nothing is set
-- aside.
-- A line [sku, location, null, n] gives up to n set-aside units back (the channel's count
-- report was judged and applied to stock as an edit of -n: that explains the drop).
-- Units are set aside only from available: a drop beyond it was sold twice already, and the
-- channel's order for it is refused as an oversell when it lands (and alerted there).
-- A bundle listing's count is kits: its drop sets whole kits' components aside (below).
-- KEYS[1] outbox stream, KEYS[2] the channel's compare-and-set hash
-- ARGV: common; request = {lines = [[sku, location, actual, null, doubts, spread]]
--   | [[sku, location, null, n]]}; spread: the locations the channel's figure sums.
-- Reply: {"ok", {lines = [{sku, location, pending}]}, 0}
local outbox, cas_key = KEYS[1], KEYS[2]
local tenant, prefix, req, channel = ARGV[1], ARGV[2], cjson.decode(ARGV[3]), ARGV[4]
if channel == '' or type(req.lines) ~= 'table' then
  return fail('invalid', {detail = 'a channel and lines are required'})
end
for _, line in ipairs(req.lines) do
  local sku, loc, actual = line_parts(line)
  local give_back = line[4]
  if not is_name(sku) or not is_name(loc) or not (is_count(actual, -MAX_QTY)
      or (give_back ~= nil and is_count(give_back, 0))) then
    return fail('invalid', {detail = 'each line is [sku, location, count]'})
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
  local target = pending
  if is_count(actual, -MAX_QTY) then
    local known = tonumber(redis.call('HGET', cas_key, 'k|' .. ref) or actual)
    local own = tonumber(redis.call('HGET', cas_key, 'o|' .. ref) or '0')
    for _, doubt in ipairs(type(line[5]) == 'table' and line[5] or {}) do
      if doubt == actual then known, own = actual, 0 end  -- our unanswered push landed
    end
    -- Only a drop is set aside: a rise (a person's restock in the channel's admin) gives
    -- nothing back, since its count report adds the units here once judged.
    target = pending + math.max((known - own) - actual, 0)
    redis.call('HSET', cas_key, 'k|' .. ref, actual)
    redis.call('HDEL', cas_key, 'o|' .. ref, 'd|' .. ref)
  else
    target = math.max(pending - line[4], 0)
  end
  -- Where the channel's figure comes from: this location, or every location of a channel
  -- that shows one figure for several (line[6]), this one first.
  local spread = type(line[6]) == 'table' and line[6] or {loc}
  local def = redis.call('HGET', bundles_key(prefix), sku)
  -- A bundle deleted since its listing dropped still has kits set aside as component units
  -- (keys "<component>\0<location>"): they go back through the kit path, which needs no
  -- definition to give back, or they would stay reserved with nothing left to explain them.
  local aside = aside_read(cas_key, sku)
  local kit_path = def
  if not kit_path then
    for _, locs in pairs(aside) do
      for k in pairs(locs) do
        if string.find(k, '\0', 1, true) then kit_path = true end
      end
    end
  end
  if kit_path then
    -- A bundle listing: its figure is kits. The kits it dropped are set aside as their
    -- components (whole kits only, from the cells its figure covers, only what is available)
    -- under the bundle's own "p|" (kits) and "S|" (units per component and cell); the
    -- bundle's order takes them back (order.lua), a give-back releases them.
    local comps = def and cjson.decode(def)
    local m = aside
    m[loc] = m[loc] or {}
    if target > pending and not comps then
      target = pending  -- a listing of a deleted bundle: nothing of it is on sale here
    elseif target > pending then
      local kits = target - pending
      for _, comp in ipairs(comps) do
        local room = 0
        for _, l in ipairs(spread) do
          local c = is_name(l) and cell_read(cells, prefix, comp[1], l)
          if c then room = room + math.max(available(c), 0) end
        end
        kits = math.min(kits, math.floor(room / comp[2]))
      end
      for _, comp in ipairs(comps) do
        local need = kits * comp[2]
        for _, l in ipairs(spread) do
          local c = need > 0 and is_name(l) and cell_read(cells, prefix, comp[1], l)
          local x = c and math.min(need, math.max(available(c), 0)) or 0
          if x > 0 then
            c.reserved = c.reserved + x
            local k = kit_aside_key(comp[1], l)
            m[loc][k] = (m[loc][k] or 0) + x
            need = need - x
            emit(outbox, ctx, 'hold', c, {reserved = x},
              channel .. ' sold ' .. sku .. ' on its own; set aside until its order arrives')
          end
        end
      end
      pending = pending + kits
    elseif target < pending then
      -- Units per kit as they were set aside (the definition may have changed since): each
      -- component's share of `give` kits over all its cells, then taken from them in order
      -- (rounded per cell, one kit spread over two cells would give back nothing).
      local give = pending - target
      local share = {}
      for k, u in pairs(m[loc]) do
        local comp = kit_aside_split(k)
        share[comp] = (share[comp] or 0) + u
      end
      for comp, u in pairs(share) do
        share[comp] = target == 0 and u or math.floor(u * give / pending)
      end
      for _, k in ipairs(ordered(m[loc])) do
        local u = m[loc][k]
        local comp, l = kit_aside_split(k)
        local y = math.min(u, share[comp])
        share[comp] = share[comp] - y
        local c = cell_read(cells, prefix, comp, l)
        local x = c and math.min(y, c.reserved) or 0
        if x > 0 then
          c.reserved = c.reserved - x
          emit(outbox, ctx, 'release', c, {reserved = -x}, channel .. ' count explained')
        end
        m[loc][k] = u - y
      end
      pending = target
    end
    aside_write(cas_key, sku, m)
  end
  local m = not kit_path and aside_fill(cas_key, sku, loc, aside)
  if m then m[loc] = m[loc] or {} end
  if kit_path then  -- done above
  elseif target > pending then
    local need = target - pending
    for _, l in ipairs(spread) do
      local c = is_name(l) and cell_read(cells, prefix, sku, l)
      local x = c and math.min(need, math.max(available(c), 0)) or 0
      if x > 0 then
        c.reserved = c.reserved + x
        m[loc][l] = (m[loc][l] or 0) + x
        pending, need = pending + x, need - x
        emit(outbox, ctx, 'hold', c, {reserved = x},
          channel .. ' sold on its own; set aside until its order arrives')
      end
    end
  elseif target < pending then
    local give = pending - target
    for _, l in ipairs(ordered(m[loc])) do
      local y = math.min(give, m[loc][l])
      local c = cell_read(cells, prefix, sku, l)
      local x = c and math.min(y, c.reserved) or 0
      if x > 0 then
        c.reserved = c.reserved - x
        emit(outbox, ctx, 'release', c, {reserved = -x}, channel .. ' count explained')
      end
      m[loc][l] = m[loc][l] - y
      pending, give = pending - y, give - y
      if give <= 0 then break end
    end
  end
  if m then aside_write(cas_key, sku, m) end
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
