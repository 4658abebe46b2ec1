-- Helpers shared by every script. Redis Lua has no imports, so the loader prepends this
-- file to each operation script before SCRIPT LOAD; it defines functions only, no effects.
--
-- Conventions for every script:
--   ARGV[1] tenant, ARGV[2] key prefix with the tenant hash tag ("sg:{acme}:"),
--   ARGV[3] the request as JSON, ARGV[4] the source channel ("" for API calls).
--   Keys derived inside a script from the prefix share the tenant's hash tag, so a script
--   never leaves its tenant's Cluster slot.
--   Reply: {"ok", reply_json, replayed (0/1)} or {error_code, detail_json}.
--   Stock cell fields live in one hash per SKU as "<location>|<field>".

local MAX_QTY = 1000000000

local function fail(code, info)
  return {code, cjson.encode(info or {})}
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A whole number in [lo, MAX_QTY]; JSON numbers arrive as doubles.
local function is_count(v, lo)
  return type(v) == 'number' and v == math.floor(v) and v >= lo and v <= MAX_QTY
end

-- A SKU or location: 1 to 128 bytes (Lua's # counts bytes, as stockgate.models.valid_line
-- does: one definition, so a line Python accepts is never refused here).
local function is_name(v)
  return type(v) == 'string' and #v > 0 and #v <= 128
end

-- An order, refund, fulfilment or hold reference: "<channel id>:<channel's id>" needs room
-- beyond a SKU's 128 bytes (a 64-byte channel name and a 100-byte bridge id).
local function is_id(v)
  return type(v) == 'string' and #v > 0 and #v <= 256
end

-- The parts of a request line [sku, location, qty]. A line that is not an array (a number,
-- a string) yields nils, which the callers' checks refuse as invalid instead of raising a
-- Lua error on line[1].
local function line_parts(line)
  if type(line) ~= 'table' then return nil, nil, nil end
  return line[1], line[2], line[3]
end

local function stock_key(prefix, sku)
  return prefix .. 'stock:' .. sku
end

-- One (sku, location) cell, read once into memory so that every check happens before any
-- write: Redis does not roll back a script that fails half-way.
local function cell_read(cells, prefix, sku, loc)
  local id = sku .. '\0' .. loc
  local c = cells[id]
  if c ~= nil then return c or nil end
  local key = stock_key(prefix, sku)
  local f = loc .. '|'
  local v = redis.call('HMGET', key, f .. 'on_hand', f .. 'reserved', f .. 'committed',
    f .. 'unavailable', f .. 'safety', f .. 'backorder_limit')
  if not v[1] then
    cells[id] = false
    return nil
  end
  c = {key = key, sku = sku, loc = loc, on_hand = tonumber(v[1]), reserved = tonumber(v[2]) or 0,
    committed = tonumber(v[3]) or 0, unavailable = tonumber(v[4]) or 0,
    safety = tonumber(v[5]) or 0, backorder_limit = tonumber(v[6]) or 0}
  -- The script's cells, so that preorder_room sees its siblings' in-memory state.
  c.cells = cells
  cells[id] = c
  return c
end

local function available(c)
  return c.on_hand - c.reserved - c.committed - c.unavailable - c.safety
end

-- Open incoming units of one SKU, per "<location>|<incoming id>" -> "<open>|<expected ms>"
-- (incoming.lua, receive.lua, incoming_cancel.lua keep it).
local function incoming_key(prefix, sku)
  return prefix .. 'incoming:sku:' .. sku
end

-- Units a cell has pre-sold: taken beyond its available and its backorder limit (what only
-- the pre-order room allowed, see can_take).
local function presold(c)
  return math.max(0, -(available(c) + c.backorder_limit))
end

-- Pre-order room of a cell: how far past its backorder limit it may go. The SKU's
-- preorder_limit is one budget for all its locations (the issue's "per-SKU limit"), so the
-- room is min(open incoming units at the cell's location, preorder_limit minus what the
-- SKU's other locations have pre-sold). Read only when a take goes past the backorder limit,
-- so a sale within stock pays nothing for it. The limit and the location's incoming units
-- are cached on the cell (no script changes them); the other locations are read each time,
-- from the script's in-memory cells where it has them (a cart or an order with lines at two
-- locations of one SKU spends the budget once, not once per location).
local function preorder_room(c)
  if not c.preorder_in then
    local limit = tonumber(redis.call('HGET', c.key, 'preorder_limit') or '0')
    local incoming = 0
    if limit > 0 then
      local prefix = string.sub(c.key, 1, #c.key - #c.sku - #'stock:')
      local flat = redis.call('HGETALL', incoming_key(prefix, c.sku))
      local mine = c.loc .. '|'
      for i = 1, #flat, 2 do
        if string.sub(flat[i], 1, #mine) == mine then
          incoming = incoming + tonumber(string.match(flat[i + 1], '^%d+'))
        end
      end
    end
    c.preorder_in = {limit = limit, incoming = incoming}
  end
  local limit, incoming = c.preorder_in.limit, c.preorder_in.incoming
  if limit <= 0 or incoming <= 0 then return 0 end
  local others = 0
  local stored = {}
  local flat = redis.call('HGETALL', c.key)
  for i = 1, #flat, 2 do
    local loc, name = string.match(flat[i], '^(.*)|([%a_]+)$')
    if loc and loc ~= c.loc then
      stored[loc] = stored[loc] or {}
      stored[loc][name] = tonumber(flat[i + 1])
    end
  end
  for loc, v in pairs(stored) do
    -- This script's copy of a sibling cell is newer than the stored one (it writes back last).
    local s = c.cells and c.cells[c.sku .. '\0' .. loc]
    if not s then
      s = {on_hand = v.on_hand or 0, reserved = v.reserved or 0, committed = v.committed or 0,
        unavailable = v.unavailable or 0, safety = v.safety or 0,
        backorder_limit = v.backorder_limit or 0}
    end
    others = others + presold(s)
  end
  return math.max(0, math.min(incoming, limit - others))
end

-- May `qty` more units leave this cell's available (honouring the backorder limit, and
-- beyond it the pre-order room against incoming stock)?
local function can_take(c, qty)
  local left = available(c) - qty + c.backorder_limit
  return left >= 0 or left + preorder_room(c) >= 0
end

-- After a take of `qty` by `ref` ("hold:<id>" or "order:<id>"): the part of it that no
-- physical unit covers is a promise, kept per cell in a zset by time (oldest first) so that
-- a cancelled or short-closed incoming can name who is at risk (workers/preorders.py).
-- Only where pre-order selling has room (a backorder-only SKU keeps no list), and only the
-- newest 1000 (the alert names the newest). receive.lua clears it once the cell is
-- physically covered again.
local function preorder_note(prefix, c, ref, qty)
  local short = math.min(qty, c.reserved + c.committed + c.unavailable - c.on_hand)
  if short > 0 and preorder_room(c) > 0 then
    local key = prefix .. 'promised:' .. c.sku .. '|' .. c.loc
    redis.call('ZADD', key, now_ms(), ref .. '|' .. short)
    redis.call('ZREMRANGEBYRANK', key, 0, -1001)
  end
end

-- Writes a cell back. With field names, writes only those (the fields a script changed);
-- without, all six (adjust, when it creates a cell, and scripts that change several).
local function cell_write(c, a, b)
  local f = c.loc .. '|'
  if b then
    redis.call('HSET', c.key, f .. a, c[a], f .. b, c[b])
  elseif a then
    redis.call('HSET', c.key, f .. a, c[a])
  else
    redis.call('HSET', c.key, f .. 'on_hand', c.on_hand, f .. 'reserved', c.reserved,
      f .. 'committed', c.committed, f .. 'unavailable', c.unavailable,
      f .. 'safety', c.safety, f .. 'backorder_limit', c.backorder_limit)
  end
end

-- Appends one outbox event for one changed cell, in the same atomic call as the change.
local function emit(outbox, ctx, ev_type, c, delta, reason)
  local ev = {ts = ctx.ts, tenant = ctx.tenant, type = ev_type, sku = c.sku, location = c.loc,
    delta = delta, source = {channel = ctx.channel, ref = ctx.ref},
    idempotency_key = ctx.key, reason = reason or ctx.reason or ''}
  if c.on_hand then
    ev.after = {on_hand = c.on_hand, reserved = c.reserved, committed = c.committed,
      unavailable = c.unavailable, safety = c.safety, backorder_limit = c.backorder_limit,
      available = available(c)}
  end
  redis.call('XADD', outbox, '*', 'e', cjson.encode(ev))
end

-- A compare-and-set channel's own moves since the count it is known to hold (moved.lua):
-- `q` units it sold itself (an order it sent), or -q it put back itself (its cancel or
-- refund with restock). Only targets whose count is known keep this; "" is no channel.
local function channel_own(prefix, channel, sku, loc, q)
  if channel == '' or q == 0 then return end
  local key, ref = prefix .. 'deliv:cas:' .. channel, sku .. '|' .. loc
  if redis.call('HEXISTS', key, 'k|' .. ref) == 1 then
    redis.call('HINCRBY', key, 'o|' .. ref, q)
  end
end

-- Units set aside for a compare-and-set channel's own sales of one SKU (moved.lua), kept
-- where they were taken: {"<target location>": {"<cell location>": units}}. A channel that
-- shows one figure for several locations has its drop taken from each in turn; its order,
-- committed at one of them, takes the units back wherever they are (order.lua).
local function aside_read(cas_key, sku)
  local raw = redis.call('HGET', cas_key, 'S|' .. sku)
  return raw and cjson.decode(raw) or {}
end

local function aside_write(cas_key, sku, m)
  for target, locs in pairs(m) do
    for l, units in pairs(locs) do
      if units <= 0 then locs[l] = nil end
    end
    if next(locs) == nil then m[target] = nil end
  end
  if next(m) == nil then
    redis.call('HDEL', cas_key, 'S|' .. sku)
  else
    redis.call('HSET', cas_key, 'S|' .. sku, cjson.encode(m))
  end
end

-- Units counted as set aside for a target ("p|...") that the map does not place are at the
-- target's own location (what moved.lua set aside before it kept the map): placed there.
local function aside_fill(cas_key, sku, target, m)
  local p = tonumber(redis.call('HGET', cas_key, 'p|' .. sku .. '|' .. target) or '0')
  local placed = 0
  for _, units in pairs(m[target] or {}) do placed = placed + units end
  if p > placed then
    m[target] = m[target] or {}
    m[target][target] = (m[target][target] or 0) + p - placed
  end
  return m
end

-- Keys of a table, `first` leading when present, the rest sorted: a stable order to take in.
local function ordered(t, first)
  local keys = {}
  for k in pairs(t) do
    if k ~= first then keys[#keys + 1] = k end
  end
  table.sort(keys)
  if first ~= nil and t[first] ~= nil then table.insert(keys, 1, first) end
  return keys
end

-- Idempotency record stored as "<fingerprint>\n<reply>": a repeat with the same request gets
-- the first reply byte for byte; the same key with another request is a conflict.
-- idem_match does the same for a record already read (an order record's "done:<id>" field).
local function idem_match(v, fp)
  if not v then return nil end
  local sep = string.find(v, '\n', 1, true)
  if string.sub(v, 1, sep - 1) ~= fp then
    return fail('idempotency_conflict', {detail = 'idempotency key reused with a different request'})
  end
  return {'ok', string.sub(v, sep + 1), 1}
end

local function idem_lookup(key, fp)
  return idem_match(redis.call('GET', key), fp)
end

local function idem_store(key, fp, reply, ttl_ms)
  redis.call('SET', key, fp .. '\n' .. reply, 'PX', ttl_ms)
end

-- Gives back the units of a live hold (release or expiry): reserved -= qty per line.
-- Returns the cells to write and the per-line deltas; writes nothing itself.
local function hold_give_back(cells, prefix, lines)
  local changes = {}
  for _, line in ipairs(lines) do
    local c = cell_read(cells, prefix, line[1], line[2])
    if c then
      -- min() guards against a cell adjusted to fewer reserved units by hand.
      local q = math.min(line[3], c.reserved)
      c.reserved = c.reserved - q
      changes[#changes + 1] = {c, {reserved = -q}}
    end
  end
  return changes
end

-- Per-customer purchase counters: one per customer and SKU, only with a customer id.
local function customer_key(prefix, customer, sku)
  return prefix .. 'cust:' .. customer .. ':' .. sku
end

local function customer_give_back(prefix, customer, lines)
  if customer == nil or customer == '' then return end
  for _, line in ipairs(lines) do
    local k = customer_key(prefix, customer, line[1])
    local left = redis.call('DECRBY', k, line[3])
    if left <= 0 then redis.call('DEL', k) end
  end
end

-- An order record has no expiry while any unit is open (committed, not shipped): a backorder
-- or a slow shipment may take months. Once none is, it lives for the return window after its
-- last change, so a late return or refund still finds its lines. Independent of the
-- idempotency TTL, which only bounds request replays and delivery dedupe.
local function order_keep(order_key, order_lines, window_ms)
  for _, ol in ipairs(order_lines) do
    if ol.open > 0 then
      redis.call('PERSIST', order_key)
      return
    end
  end
  redis.call('PEXPIRE', order_key, window_ms)
end

-- A hold left `held` (released, expired, claimed): its record now expires, the idempotency
-- TTL after this change (keep_ms, written by hold.lua).
local function hold_closed(hold_key)
  local keep = redis.call('HGET', hold_key, 'keep_ms')
  if keep then redis.call('PEXPIRE', hold_key, tonumber(keep)) end
end

-- Expires one hold whose TTL has passed: its units go back to sale now. The caller has
-- checked that the hold is `held` and due. Returns nothing; writes the cells it changes.
local function expire_hold(outbox, tenant, prefix, expiry_key, cells, hold_id, lines_json,
                           customer, ts)
  local lines = cjson.decode(lines_json)
  local ctx = {ts = ts, tenant = tenant, channel = '', ref = hold_id,
    key = 'expire:' .. hold_id, reason = 'hold ttl passed'}
  for _, ch in ipairs(hold_give_back(cells, prefix, lines)) do
    cell_write(ch[1], 'reserved')
    emit(outbox, ctx, 'expire', ch[1], ch[2])
  end
  customer_give_back(prefix, customer, lines)
  redis.call('HSET', prefix .. 'hold:' .. hold_id, 'status', 'expired')
  hold_closed(prefix .. 'hold:' .. hold_id)
  redis.call('ZREM', expiry_key, hold_id)
end

-- Expires up to `limit` holds of the tenant whose TTL has passed, before a script judges
-- stock: a dead hold must never make a live checkout look oversold while it waits for the
-- sweep (the sweep would then free the unit and sell it a second time).
local function expire_due(outbox, tenant, prefix, expiry_key, cells, ts, limit)
  local due = redis.call('ZRANGEBYSCORE', expiry_key, '-inf', ts, 'LIMIT', 0, limit)
  local n = 0
  for _, hold_id in ipairs(due) do
    local status, lines_json, customer = unpack(redis.call('HMGET', prefix .. 'hold:' .. hold_id,
      'status', 'lines', 'customer'))
    if status == 'held' then
      expire_hold(outbox, tenant, prefix, expiry_key, cells, hold_id, lines_json, customer, ts)
      n = n + 1
    else
      redis.call('ZREM', expiry_key, hold_id)
    end
  end
  return n
end

-- Bundles (lua/bundle.lua): hash "<prefix>bundles" maps a bundle SKU to its components as
-- JSON [[sku, qty], ...]; set "<prefix>bundled:<component>" names the bundles that use it.
local function bundles_key(prefix)
  return prefix .. 'bundles'
end

local function bundled_key(prefix, component)
  return prefix .. 'bundled:' .. component
end

-- A request's lines with every bundle line replaced by its component lines (qty times the
-- per-bundle qty, same location), so that the callers' checks sum a component's units over
-- all the lines that need it: a cart with a kit and one of its parts, or two kits sharing a
-- part, is judged on the sum, never line by line (Medusa issue 16502 oversold exactly that).
-- An expanded line carries its bundle as line[4], the per-bundle qty as line[5] and the
-- definition it was expanded with (the raw JSON) as line[6]: the records keep that tag, so
-- that a later fulfilment, refund or edit naming the bundle acts on the units the sale took,
-- whatever the definition has become since (kit_groups, expand_recorded).
-- One HMGET per call: a cart without bundles pays one lookup of an absent field each.
-- Returns the lines and a note naming the bundles ("" when none).
local function expand_bundles(prefix, lines)
  if type(lines) ~= 'table' or #lines == 0 then return lines, '' end
  local names = {}
  for i, line in ipairs(lines) do
    local sku = type(line) == 'table' and line[1]
    names[i] = is_name(sku) and sku or '\0'
  end
  -- In slices: unpack() of thousands of values would overflow Lua's C stack.
  local defs = {}
  for first = 1, #names, 1000 do
    local got = redis.call('HMGET', bundles_key(prefix),
      unpack(names, first, math.min(first + 999, #names)))
    for j, v in ipairs(got) do defs[first + j - 1] = v end
  end
  local out, seen, note = {}, {}, {}
  for i, line in ipairs(lines) do
    local raw = defs[i]
    if raw then
      local _, loc, qty = line_parts(line)
      for _, comp in ipairs(cjson.decode(raw)) do
        -- A qty that is not a number stays as it is, for the caller's check to refuse.
        local q = type(qty) == 'number' and qty * comp[2] or qty
        out[#out + 1] = {comp[1], loc, q, line[1], comp[2], raw, nil, i}
      end
      if not seen[line[1]] then
        seen[line[1]] = true
        note[#note + 1] = line[1]
      end
    else
      out[#out + 1] = line
    end
  end
  if #note == 0 then return lines, '' end
  return out, ' (bundles ' .. table.concat(note, ', ') .. ')'
end

-- Lines as the records keep them: [sku, location, qty], without the bundle tag.
local function plain_lines(lines)
  local out = {}
  for i, line in ipairs(lines) do out[i] = {line[1], line[2], line[3]} end
  return out
end

-- The bundle tag of a record's entry or an expanded line: '' for a plain line, else the
-- bundle and the definition it was sold under. Units match only units of the same tag: kit
-- units and loose units of one SKU are never confused (a refund of the kit never takes the
-- loose parts the customer kept), nor are kits sold under two definitions.
local function kit_key(bundle, def)
  if type(bundle) ~= 'string' or type(def) ~= 'string' then return '' end
  return bundle .. '\0' .. def
end

-- An order entry's fields for a tagged line (nothing for a plain one).
local function tag_entry(e, line)
  if kit_key(line[4], line[6]) ~= '' then
    e.bundle, e.per, e.def = line[4], line[5], line[6]
  end
  return e
end

-- A hold record keeps [sku, location, qty] lines (what release, expiry and readers expect)
-- and, for a bundle hold, a parallel "tags" list: false or [bundle, per, definition].
local function hold_tags(lines)
  local tags, any = {}, false
  for i, line in ipairs(lines) do
    if kit_key(line[4], line[6]) ~= '' then
      tags[i], any = {line[4], line[5], line[6]}, true
    else
      tags[i] = false
    end
  end
  return any and tags or nil
end

-- A hold's lines with their tags back as line[4..6].
local function hold_tagged(lines, tags_json)
  local tags = tags_json and cjson.decode(tags_json) or {}
  for i, line in ipairs(lines) do
    local t = tags[i]
    if type(t) == 'table' then line[4], line[5], line[6] = t[1], t[2], t[3] end
  end
  return lines
end

-- A record's kits per bundle, in the order first sold: groups of the entries one bundle
-- definition took, with `units(entry)` as each entry offers to the operation (its open units
-- for a fulfilment; open, cancelled or shipped ones for a refund; all for an edit).
-- entries: {sku, location, bundle, per, def}. Untagged entries are plain lines.
local function kit_groups(entries, units)
  local groups, by = {}, {}
  for _, e in ipairs(entries) do
    local key = kit_key(e.bundle, e.def)
    if key ~= '' then
      local g = by[key]
      if not g then
        g = {bundle = e.bundle, def = e.def, comps = {}, per = {}, have = {}}
        by[key] = g
        groups[e.bundle] = groups[e.bundle] or {}
        table.insert(groups[e.bundle], g)
      end
      if not g.per[e.sku] then
        g.per[e.sku] = e.per
        g.comps[#g.comps + 1] = e.sku
      end
      g.have[#g.have + 1] = {e.sku, e.location, units(e)}
    end
  end
  return groups
end

-- Whole kits a group can give at `loc` ("" any): the fewest over its components.
local function kit_cap(g, loc)
  local sum = {}
  for _, h in ipairs(g.have) do
    if loc == '' or loc == h[2] then sum[h[1]] = (sum[h[1]] or 0) + h[3] end
  end
  local cap = MAX_QTY
  for _, sku in ipairs(g.comps) do
    cap = math.min(cap, math.floor((sum[sku] or 0) / g.per[sku]))
  end
  return cap
end

-- Request lines with every bundle line the record sold expanded from the record's own kits
-- (kit_groups), oldest first, never from the bundles hash: a redefined or deleted bundle
-- still ships, returns and merges exactly what was sold. Kits beyond what the record holds:
-- `rest` 'current' leaves them to expand_bundles (an edit adding kits: today's definition);
-- 'first' puts them on the first group (a fulfilment then fails, a refund restocks only
-- what is there). Other lines pass through as they are. Each kit chunk's lines share a
-- part number (line[7]) so that order.lua judges a kit whole. Returns out, rest lines, note.
local function expand_recorded(lines, groups, rest)
  local out, left_over, note, seen, part = {}, {}, {}, {}, 0
  local function put(g, loc, k)
    part = part + 1
    for _, sku in ipairs(g.comps) do
      out[#out + 1] = {sku, loc, k * g.per[sku], g.bundle, g.per[sku], g.def, part}
    end
  end
  for _, line in ipairs(lines) do
    local sku, loc, qty = line_parts(line)
    local gs = type(sku) == 'string' and groups[sku]
    if gs and type(loc) == 'string' and is_count(qty, 1) then
      local left, take = qty, {}
      for i, g in ipairs(gs) do
        -- Kits an earlier line of the request took from this group are not there twice.
        take[i] = math.max(math.min(left, kit_cap(g, loc) - (g.used or 0)), 0)
        g.used = (g.used or 0) + take[i]
        left = left - take[i]
      end
      if left > 0 and rest == 'first' then take[1], left = take[1] + left, 0 end
      for i, g in ipairs(gs) do
        if take[i] > 0 then put(g, loc, take[i]) end
      end
      if left > 0 then left_over[#left_over + 1] = {sku, loc, left} end
      if not seen[sku] then
        seen[sku] = true
        note[#note + 1] = sku
      end
    else
      left_over[#left_over + 1] = line
    end
  end
  return out, left_over, #note > 0 and (' (bundles ' .. table.concat(note, ', ') .. ')') or ''
end

-- Lines judged together: one part per plain line, one per kit chunk (line[7], or the
-- request line a current expansion came from, line[8]).
local function line_parts_grouped(lines)
  local parts, by = {}, {}
  for _, line in ipairs(lines) do
    local id = type(line) == 'table' and (line[7] and ('r' .. line[7])
      or line[8] and ('c' .. line[8])) or nil
    if id and by[id] then
      table.insert(by[id], line)
    else
      local p = {line}
      parts[#parts + 1] = p
      if id then by[id] = p end
    end
  end
  return parts
end

-- A compare-and-set channel's set-aside for a bundle listing (moved.lua): "p|<bundle>|<t>"
-- kits, "S|<bundle>" {target: {"<component>\0<cell location>": units}} (aside_read/write).
local function kit_aside_key(comp, loc)
  return comp .. '\0' .. loc
end

local function kit_aside_split(key)
  local i = string.find(key, '\0', 1, true)
  return string.sub(key, 1, i - 1), string.sub(key, i + 1)
end

-- The lines a fulfilment or refund acts on: a record written since entries carry bundle tags
-- ("kits" = 1) expands bundle lines from its own kits only, and a line naming a bundle it
-- never sold (or a deleted one) stays a line of that SKU, matching nothing; an older record
-- (untagged component entries) expands with today's definition and matches untagged units,
-- as it always did. Returns the lines and the note for reasons.
local function expand_for_record(prefix, lines, entries, tagged, units)
  if not tagged then
    local out, note = expand_bundles(prefix, lines)
    return note == '' and out or plain_lines(out), note
  end
  local out, rest, note = expand_recorded(lines, kit_groups(entries, units), 'first')
  for _, line in ipairs(rest) do out[#out + 1] = line end
  return out, note
end

-- Does a record's entry hold units of this line (same SKU, location when named, same tag)?
local function entry_matches(ol, sku, loc, line)
  return ol.sku == sku and (loc == '' or loc == ol.location)
    and kit_key(ol.bundle, ol.def) == kit_key(line[4], line[6])
end

-- A compare-and-set channel's own moves of kits: a kit line moved the channel's bundle
-- listing, never its component listings (channel_own). Units per component are gathered
-- per bundle, location and `group` (a part or a definition), then booked once as whole
-- kits (the most any component moved: a kit partly shipped still moved one listing unit).
local function kit_own_add(acc, line_or_entry, comp, loc, units, group)
  local k = line_or_entry.bundle .. '\0' .. loc .. '\0' .. (group or '')
  local a = acc[k]
  if not a then
    a = {bundle = line_or_entry.bundle, loc = loc, comps = {}}
    acc[k] = a
  end
  a.comps[comp] = (a.comps[comp] or 0) + units / line_or_entry.per
end

local function kit_own_book(prefix, channel, acc, sign)
  for _, a in pairs(acc) do
    local kits = 0
    for _, n in pairs(a.comps) do kits = math.max(kits, n) end
    channel_own(prefix, channel, a.bundle, a.loc, sign * math.ceil(kits))
  end
end

-- One outbox event per changed cell: deltas gathered per cell in the script's order, then
-- emitted once each (a kit and a loose part, or two entries of one cell, are one event).
local function moves_add(moves, c, delta, ev_type, reason)
  local m = moves.by[c]
  if not m then
    m = {c = c, delta = {}, type = ev_type, reason = reason}
    moves.by[c] = m
    moves[#moves + 1] = m
  end
  for f, v in pairs(delta) do m.delta[f] = (m.delta[f] or 0) + v end
end

local function moves_emit(outbox, ctx, moves)
  for _, m in ipairs(moves) do emit(outbox, ctx, m.type, m.c, m.delta, m.reason) end
end
