-- order: a channel order. The sale already happened on the channel, so lines are judged one
-- by one: a line that can be covered commits; one that cannot is refused as an
-- oversell_rejected event (never as negative stock) and reported in the reply for an alert.
-- A kit line is judged whole: all its components or none (see kit_part). Changes are summed
-- per cell: one event per changed cell; the reply keeps one result per line.
--
-- A hold the order names is only a hint (it travels in a field the shopper controls). It is
-- claimed when it is live (held, TTL not passed), was made for no channel or for this one, and
-- shares a SKU with the order: per SKU, min(order qty, hold qty) units move reserved ->
-- committed at the hold's location (line status "held"); units beyond the hold come from
-- available at the order's location; hold units the order lacks are released. A hold past
-- its TTL is expired here first (units back to sale), then the order takes from available:
-- the units go to this checkout or back to sale, never both. Any other hint claims nothing.
--
-- An order record that already exists is merged, never counted twice: every unit its lines
-- hold (open, shipped, returned) is this sale's (a storefront commit under this very order
-- id, the explicit link POST /v1/holds/{id}/commit {"order_id": "<channel>:<id>"}; or an
-- earlier state of the same channel order): the order adds only its units beyond them and
-- gives back open units it no longer has. A channel order's later state merges only when
-- its body is newer (req.state_ms, the body's own modification time): an edit that adds a
-- line, or an order re-opened after a cancel (WooCommerce failed -> processing). An older
-- body is a no-op.
--
-- Before judging stock it expires up to 50 due holds of the tenant (see hold.lua).
-- KEYS[1] outbox stream, KEYS[2] order record, KEYS[3] expiry index, KEYS[4] hold record
--   (of req.hold_id; any key of the tenant when there is no hint)
-- ARGV: common; request = {order_id, fp, window_ms, state_ms (0: the body has no time),
--   hold_id ("" for none), channels (the tenant's channel ids), lines = [[sku, location, qty]]}
-- Reply: {"ok", {order_id, hold_id?, lines = [{sku, location, qty, status}]}, replayed};
--   line status is held, committed, oversell_rejected, unknown_sku or invalid.
-- Errors: invalid, idempotency_conflict
local outbox, order_key, expiry_key, hold_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local tenant, prefix, req, channel = ARGV[1], ARGV[2], cjson.decode(ARGV[3]), ARGV[4]

local rec_fp, rec_reply, rec_lines, rec_status, rec_channel_fp, rec_state, rec_kits = unpack(
  redis.call('HMGET', order_key, 'fp', 'reply', 'lines', 'status', 'channel_fp', 'state_ms',
    'kits'))
-- Entries carry bundle tags on every record written since they exist ("kits" = 1); an older
-- record's entries are all plain, and its bundle lines merge as they always did (untagged).
local tagged = not rec_fp or rec_kits == '1'
local state_ms = tonumber(req.state_ms) or 0
rec_state = tonumber(rec_state) or 0
local newer = state_ms > rec_state
local reopen = false
if rec_fp then
  local unchanged = {'ok', cjson.encode({order_id = req.order_id}), 1}
  -- The state last applied: a channel's later body (channel_fp) replaces the first one.
  local latest_fp = rec_channel_fp or rec_fp
  if rec_status == 'cancelled' then
    -- A cancel landed first or the order is over: only a newer body re-opens it; one as old
    -- as the cancel cannot be ordered against it, so it is refused (and alerted) instead.
    if state_ms > 0 and state_ms == rec_state then
      return fail('idempotency_conflict', {detail = 'order cancelled at the same time'})
    end
    if not newer then return unchanged end
    reopen = true
  elseif latest_fp == req.fp then
    -- The same state again; a newer time for it still orders later bodies against it.
    if newer then redis.call('HSET', order_key, 'state_ms', state_ms) end
    return {'ok', rec_reply, 1}
  elseif state_ms > 0 and state_ms < rec_state then
    return unchanged  -- an older state of an order already moved on
  elseif not newer and (string.sub(rec_fp, 1, 5) ~= 'hold:' or rec_channel_fp) then
    return fail('idempotency_conflict', {detail = 'order_id reused with a different order'})
  end
end
if not is_id(req.order_id) or type(req.lines) ~= 'table' or #req.lines == 0 then
  return fail('invalid', {detail = 'order needs an order_id and at least one line'})
end

local ts = now_ms()
local cells = {}
expire_due(outbox, tenant, prefix, expiry_key, cells, ts, 50)

-- Units that already belong to this sale: the claimed hold's reserved units, or the record's
-- lines. {sku, loc, qty, open, state, line, key}. A record line's qty counts every unit of the
-- sale it holds, whatever became of it (open, shipped, returned, refunded before shipping): a
-- channel's later body names the order's original quantities (Shopify `quantity`). Units
-- that are not open are matched first and never given back; only open ones can be. `key` is
-- the bundle tag (kit_key): a kit's units match only lines of that kit, loose ones only
-- loose lines.
local sources, entries, claimed = {}, {}, nil
local function source(sku, loc, qty, open, state, line, bundle, per, def)
  if not tagged then bundle, per, def = nil, nil, nil end
  sources[#sources + 1] = {sku = sku, loc = loc, location = loc, qty = qty, open = open,
    state = state, line = line, bundle = bundle, per = per, def = def,
    key = kit_key(bundle, def)}
end
if rec_fp then
  entries = cjson.decode(rec_lines)
  for _, ol in ipairs(entries) do
    if reopen then
      -- The cancel released these units: no longer the sale's, and no longer a credit for
      -- a cancel-type refund of the re-opened order.
      ol.qty = ol.qty - (ol.cancelled or 0)
      ol.cancelled = nil
    end
    if ol.qty > 0 then
      source(ol.sku, ol.location, ol.qty, ol.open, 'committed', ol, ol.bundle, ol.per, ol.def)
    end
  end
elseif is_id(req.hold_id) then
  local status, lines_json, expires_at, customer, hold_channel, tags_json = unpack(
    redis.call('HMGET', hold_key, 'status', 'lines', 'expires_at', 'customer', 'channel', 'tags'))
  if status == 'held' and tonumber(expires_at) <= ts then
    expire_hold(outbox, tenant, prefix, expiry_key, cells, req.hold_id, lines_json, customer, ts)
  elseif status == 'held' then
    local foreign = false
    if hold_channel and hold_channel ~= '' and hold_channel ~= channel then
      for _, name in ipairs(req.channels or {}) do
        if name == hold_channel then foreign = true end
      end
    end
    local hold_lines = cjson.decode(lines_json)
    local tagged_lines = hold_tagged(cjson.decode(lines_json), tags_json)
    -- Shares a SKU: a component of a line as defined today, or a bundle the hold took.
    local names = {}
    for _, line in ipairs(expand_bundles(prefix, req.lines)) do
      if type(line) == 'table' then names[line[1]] = true end
    end
    for _, line in ipairs(req.lines) do
      if type(line) == 'table' then names[line[1]] = true end
    end
    local overlap = false
    for _, hl in ipairs(tagged_lines) do
      if names[hl[1]] or (hl[4] and names[hl[4]]) then overlap = true end
    end
    if overlap and not foreign then
      claimed = {customer = customer, lines = hold_lines}
      for _, hl in ipairs(tagged_lines) do
        source(hl[1], hl[2], hl[3], hl[3], 'reserved', nil, hl[4], hl[5], hl[6])
      end
    end
  end
end

-- Bundle lines become component lines. A kit the record or the claimed hold already holds
-- expands from its own tagged units (what was sold, whatever the definition is now); only
-- kits beyond them take today's definition (an edit that adds kits). See expand_recorded.
local req_lines, bundle_note
if tagged then
  local rest, more, note2
  req_lines, rest, bundle_note = expand_recorded(req.lines,
    kit_groups(sources, function(s) return s.qty end), 'current')
  more, note2 = expand_bundles(prefix, rest)
  for _, line in ipairs(more) do req_lines[#req_lines + 1] = line end
  if bundle_note == '' then bundle_note = note2 end
else
  req_lines, bundle_note = expand_bundles(prefix, req.lines)
  for _, line in ipairs(req_lines) do
    if type(line) == 'table' then line[4], line[5], line[6], line[8] = nil, nil, nil, nil end
  end
end

local ctx = {ts = ts, tenant = tenant, channel = channel, ref = req.order_id,
  key = 'order:' .. req.order_id, reason = 'channel order' .. bundle_note}

-- Every cell's change is gathered and emitted once at the end (one event per changed cell:
-- a kit and a loose part of one SKU are one commit); a refusal keeps its place among them.
local results, moves, kit_own, kit_back = {}, {by = {}}, {}, {}
local function refuse(c, reason)
  moves[#moves + 1] = {c = c, delta = {}, type = 'oversell_rejected', reason = reason}
end

-- A compare-and-set channel's own bookkeeping (moved.lua): units it was seen to sell on its
-- own before this order arrived are set aside for it in `reserved`, and this order takes
-- them first, so it is never refused for units kept for this very sale; its other units
-- (from a hold it claimed, or from available) count as its own sales since its known count,
-- and units an edit gives back as its own restock (channel_own). A kit line's units are the
-- channel's bundle listing's: set aside under the bundle ("S|<bundle>", kits in "p|"), and
-- booked as its own sale of kits on the bundle listing (kit_own), never of the components.
local cas_key = prefix .. 'deliv:cas:' .. channel
local function own(line, sku, loc, x)
  if line[4] then
    kit_own_add(kit_own, {bundle = line[4], per = line[5]}, sku, loc, x, line[7] or line[8])
  else
    channel_own(prefix, channel, sku, loc, x)
  end
end
local function take_set_aside(sku, loc, q)
  if channel == '' then return 0 end
  local m = aside_fill(cas_key, sku, loc, aside_read(cas_key, sku))
  if next(m) == nil then return 0 end
  local taken = 0
  for _, target in ipairs(ordered(m, loc)) do
    local ref = sku .. '|' .. target
    local p = tonumber(redis.call('HGET', cas_key, 'p|' .. ref) or '0')
    for _, l in ipairs(ordered(m[target], loc)) do
      local c = cell_read(cells, prefix, sku, l)
      local x = c and math.min(q - taken, m[target][l], c.reserved) or 0
      if x > 0 then
        c.reserved = c.reserved - x
        c.committed = c.committed + x
        m[target][l] = m[target][l] - x
        p, taken = p - x, taken + x
        moves_add(moves, c, {reserved = -x, committed = x}, 'commit',
          'order of units the channel had sold on its own')
        entries[#entries + 1] = {sku = sku, location = l, qty = x, open = x, fulfilled = 0,
          restocked = 0}
        results[#results + 1] = {sku = sku, location = l, qty = x, status = 'committed'}
      end
    end
    if p > 0 then
      redis.call('HSET', cas_key, 'p|' .. ref, p)
    else
      redis.call('HDEL', cas_key, 'p|' .. ref, 't|' .. ref)
    end
  end
  aside_write(cas_key, sku, m)
  return taken
end

-- A bundle's set-aside: how many of `comp` it keeps (dry), and taking them back.
local kit_asides = {}
local function kit_aside(bundle)
  local a = kit_asides[bundle]
  if not a then
    a = {m = aside_read(cas_key, bundle), kits = 0, p = {}}
    for target in pairs(a.m) do
      a.p[target] = tonumber(redis.call('HGET', cas_key, 'p|' .. bundle .. '|' .. target) or '0')
      a.kits = a.kits + a.p[target]
    end
    kit_asides[bundle] = a
  end
  return a
end
local function kit_aside_units(bundle, comp)
  local a, n = kit_aside(bundle), 0
  for _, units in pairs(a.m) do
    for k, u in pairs(units) do
      local s, l = kit_aside_split(k)
      local c = s == comp and cell_read(cells, prefix, s, l)
      if c then n = n + math.min(u, c.reserved) end
    end
  end
  return n
end
local function take_kit_aside(bundle, comp, loc, q)
  local a, taken = kit_aside(bundle), 0
  for _, target in ipairs(ordered(a.m, loc)) do
    local units = a.m[target]
    for _, k in ipairs(ordered(units, kit_aside_key(comp, loc))) do
      local s, l = kit_aside_split(k)
      local c = s == comp and cell_read(cells, prefix, s, l)
      local x = c and math.min(q - taken, units[k], c.reserved) or 0
      if x > 0 then
        c.reserved = c.reserved - x
        c.committed = c.committed + x
        units[k] = units[k] - x
        taken = taken + x
        moves_add(moves, c, {reserved = -x, committed = x}, 'commit',
          'order of units the channel had sold on its own')
      end
    end
  end
  return taken
end
local function kit_aside_done(bundle, loc, kits)
  local a = kit_asides[bundle]
  for _, target in ipairs(ordered(a.m, loc)) do
    local x = math.min(kits, a.p[target])
    a.p[target], kits = a.p[target] - x, kits - x
    local ref = bundle .. '|' .. target
    if a.p[target] > 0 then
      redis.call('HSET', cas_key, 'p|' .. ref, a.p[target])
    else
      redis.call('HDEL', cas_key, 'p|' .. ref, 't|' .. ref)
      -- No kit is pending there any more: units still set aside for it (a definition that
      -- changed between the drop and the order) go back to sale, never stay locked.
      for k, u in pairs(a.m[target]) do
        local sku, l = kit_aside_split(k)
        local c = cell_read(cells, prefix, sku, l)
        local x = c and math.min(u, c.reserved) or 0
        if x > 0 then
          c.reserved = c.reserved - x
          moves_add(moves, c, {reserved = -x}, 'release', channel .. ' count explained')
        end
      end
      a.m[target] = nil
    end
  end
  aside_write(cas_key, bundle, a.m)
end

-- Units of the sale's sources this line may take (dry) and taking them.
local function source_room(line)
  local n, key = 0, kit_key(line[4], line[6])
  for _, s in ipairs(sources) do
    if s.sku == line[1] and s.key == key then n = n + s.qty end
  end
  return n
end
local function take_sources(line, q)
  local sku, key = line[1], kit_key(line[4], line[6])
  for _, s in ipairs(sources) do
    if q == 0 then break end
    if s.sku == sku and s.key == key and s.qty > 0 then
      local x = math.min(q, s.qty)
      s.qty = s.qty - x
      q = q - x
      if s.state == 'reserved' then
        local c = cell_read(cells, prefix, s.sku, s.loc)
        if c then
          local r = math.min(x, c.reserved)
          c.reserved = c.reserved - r
          c.committed = c.committed + x
          moves_add(moves, c, {reserved = -r, committed = x}, 'commit', 'order placed from hold')
        end
        own(line, sku, s.loc, x)
        entries[#entries + 1] = tag_entry({sku = sku, location = s.loc, qty = x, open = x,
          fulfilled = 0, restocked = 0}, line)
      end
      results[#results + 1] = {sku = sku, location = s.loc, qty = x, status = 'held'}
    end
  end
  return q
end
local function commit_available(line, c, q)
  c.committed = c.committed + q
  own(line, line[1], line[2], q)
  moves_add(moves, c, {committed = q}, 'commit')
  preorder_note(prefix, c, 'order:' .. req.order_id, q)
  entries[#entries + 1] = tag_entry({sku = line[1], location = line[2], qty = q, open = q,
    fulfilled = 0, restocked = 0}, line)
  results[#results + 1] = {sku = line[1], location = line[2], qty = q, status = 'committed'}
end

-- A kit chunk is judged whole before anything of it moves: every component's units from the
-- sale's sources, the bundle's set-aside, then available; if any component cannot be
-- covered, no component is taken and each is refused (one oversell_rejected per component
-- cell, the shape of any refused line): never half a kit locked to an order that cannot ship.
local function kit_part(part)
  local bundle, loc = part[1][4], part[1][2]
  local plan, ok, kits_left, invalid = {}, true, 0, false
  for i, line in ipairs(part) do
    local q = line[3]
    if not is_name(line[1]) or not is_name(loc) or not is_count(q, 1) then
      plan[i] = {}
      ok, invalid = false, true
    else
      local rem = q - math.min(q, source_room(line))
      plan[i] = {rem = rem}
      kits_left = math.max(kits_left, math.ceil(rem / line[5]))
    end
  end
  if ok then
    local kits = channel ~= '' and math.min(kits_left, kit_aside(bundle).kits) or 0
    for i, line in ipairs(part) do
      local pl = plan[i]
      pl.aside = kits > 0 and math.min(pl.rem, kits * line[5], kit_aside_units(bundle, line[1]))
        or 0
      pl.need = pl.rem - pl.aside
      local c = cell_read(cells, prefix, line[1], loc)
      if not c and pl.rem > 0 then
        pl.status, ok = 'unknown_sku', false
      elseif pl.need > 0 and not can_take(c, pl.need) then
        pl.status, ok = 'oversell_rejected', false
      end
      pl.c = c
    end
    plan.kits = kits
  end
  if not ok then
    for i, line in ipairs(part) do
      local q, pl = line[3], plan[i]
      if invalid then  -- a kit line out of bounds (qty x per-bundle qty): no event
        results[#results + 1] = {sku = type(line[1]) == 'string' and line[1] or '',
          location = type(loc) == 'string' and string.sub(loc, 1, 64) or '',
          qty = is_count(q, -MAX_QTY) and q or 0, status = 'invalid'}
      else
        local c = pl.c or cell_read(cells, prefix, line[1], loc)
        if c then
          refuse(c, 'requested ' .. q .. ', available ' .. math.max(available(c), 0)
            .. ' (kit ' .. bundle .. ' refused whole)')
        end
        results[#results + 1] = {sku = line[1], location = loc, qty = q,
          status = c and 'oversell_rejected' or 'unknown_sku'}
      end
    end
    return
  end
  for i, line in ipairs(part) do
    local pl = plan[i]
    local q = take_sources(line, line[3])
    if pl.aside > 0 then
      local x = take_kit_aside(bundle, line[1], loc, pl.aside)
      entries[#entries + 1] = tag_entry({sku = line[1], location = loc, qty = x, open = x,
        fulfilled = 0, restocked = 0}, line)
      results[#results + 1] = {sku = line[1], location = loc, qty = x, status = 'committed'}
      q = q - x
    end
    if q > 0 then commit_available(line, pl.c, q) end
  end
  if plan.kits > 0 then kit_aside_done(bundle, loc, plan.kits) end
end

for _, part in ipairs(line_parts_grouped(req_lines)) do
  local line = part[1]
  if type(line) == 'table' and line[4] then
    kit_part(part)
  else
    local sku, loc, q = line_parts(line)
    if not is_name(sku) or not is_name(loc) or not is_count(q, 1) then
      -- Python skips such lines already (same definition); one must never void the others.
      results[#results + 1] = {sku = type(sku) == 'string' and string.sub(sku, 1, 128) or '',
        location = type(loc) == 'string' and string.sub(loc, 1, 64) or '',
        qty = is_count(q, -MAX_QTY) and q or 0, status = 'invalid'}
    else
      q = take_sources(line, q)
      local c = q > 0 and cell_read(cells, prefix, sku, loc)
      q = q - (q > 0 and take_set_aside(sku, loc, q) or 0)
      if q > 0 then
        if not c then
          results[#results + 1] = {sku = sku, location = loc, qty = q, status = 'unknown_sku'}
        elseif not can_take(c, q) then
          refuse(c, 'requested ' .. q .. ', available ' .. math.max(available(c), 0))
          results[#results + 1] = {sku = sku, location = loc, qty = q,
            status = 'oversell_rejected'}
        else
          commit_available(line, c, q)
        end
      end
    end
  end
end

-- What belonged to the sale but the order does not have: a claimed hold's leftover units go
-- back to sale; a storefront-committed record's leftover open units are called off.
local given_back = {}
for _, s in ipairs(sources) do
  if s.qty > 0 then
    local c = cell_read(cells, prefix, s.sku, s.loc)
    if c and s.state == 'reserved' then
      local r = math.min(s.qty, c.reserved)
      c.reserved = c.reserved - r
      moves_add(moves, c, {reserved = -r}, 'release', 'hold units not in the order')
      given_back[#given_back + 1] = {s.sku, s.loc, s.qty}
    elseif c and math.min(s.qty, s.open) > 0 then
      -- Units that are not open were matched first: what is left unmatched is open units.
      local q = math.min(s.qty, s.open)
      local x = math.min(q, c.committed)
      c.committed = c.committed - x
      s.line.open = s.line.open - q
      s.line.qty = s.line.qty - q
      moves_add(moves, c, {committed = -x}, 'cancel', 'units no longer in the order')
      if s.key ~= '' then
        kit_own_add(kit_back, s, s.sku, s.loc, x, s.def)
      else
        channel_own(prefix, channel, s.sku, s.loc, -x)
      end
    end
  end
end
kit_own_book(prefix, channel, kit_own, 1)
kit_own_book(prefix, channel, kit_back, -1)
for _, c in pairs(cells) do
  if c then cell_write(c) end
end
moves_emit(outbox, ctx, moves)

local reply = cjson.encode({order_id = req.order_id,
  hold_id = claimed and req.hold_id or nil, lines = results})
if rec_fp then
  redis.call('HSET', order_key, 'status', 'open', 'channel_fp', req.fp, 'reply', reply,
    'lines', cjson.encode(entries), 'channel', channel, 'state_ms', math.max(state_ms, rec_state))
  redis.call('HDEL', order_key, 'cancel_reply')
else
  redis.call('HSET', order_key, 'status', 'open', 'fp', req.fp, 'reply', reply,
    'lines', cjson.encode(entries), 'channel', channel, 'state_ms', state_ms, 'kits', 1)
end
if claimed then
  customer_give_back(prefix, claimed.customer, given_back)
  redis.call('HSET', order_key, 'hold_id', req.hold_id)
  redis.call('HSET', hold_key, 'status', 'committed', 'order_id', req.order_id)
  hold_closed(hold_key)
  redis.call('ZREM', expiry_key, req.hold_id)
end
order_keep(order_key, entries, req.window_ms)
return {'ok', reply, 0}
