-- order: a channel order. The sale already happened on the channel, so lines are judged one
-- by one: a line that can be covered commits; one that cannot is refused as an
-- oversell_rejected event (never as negative stock) and reported in the reply for an alert.
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

local rec_fp, rec_reply, rec_lines, rec_status, rec_channel_fp, rec_state = unpack(
  redis.call('HMGET', order_key, 'fp', 'reply', 'lines', 'status', 'channel_fp', 'state_ms'))
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

-- A bundle line is its component lines from here on (see expand_bundles in _common.lua).
local req_lines, bundle_note = expand_bundles(prefix, req.lines)

local ts = now_ms()
local cells = {}
expire_due(outbox, tenant, prefix, expiry_key, cells, ts, 50)

-- Units that already belong to this sale: the claimed hold's reserved units, or the record's
-- lines. {sku, loc, qty, open, state, line}. A record line's qty counts every unit of the sale
-- it holds, whatever became of it (open, shipped, returned, refunded before shipping): a
-- channel's later body names the order's original quantities (Shopify `quantity`). Units
-- that are not open are matched first and never given back; only open ones can be.
local sources, entries, claimed = {}, {}, nil
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
      sources[#sources + 1] = {sku = ol.sku, loc = ol.location, qty = ol.qty, open = ol.open,
        state = 'committed', line = ol}
    end
  end
elseif is_id(req.hold_id) then
  local status, lines_json, expires_at, customer, hold_channel = unpack(redis.call('HMGET',
    hold_key, 'status', 'lines', 'expires_at', 'customer', 'channel'))
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
    local overlap = false
    for _, hl in ipairs(hold_lines) do
      for _, line in ipairs(req_lines) do
        if type(line) == 'table' and line[1] == hl[1] then overlap = true end
      end
    end
    if overlap and not foreign then
      claimed = {customer = customer, lines = hold_lines}
      for _, hl in ipairs(hold_lines) do
        sources[#sources + 1] = {sku = hl[1], loc = hl[2], qty = hl[3], open = hl[3],
          state = 'reserved'}
      end
    end
  end
end

local ctx = {ts = ts, tenant = tenant, channel = channel, ref = req.order_id,
  key = 'order:' .. req.order_id, reason = 'channel order' .. bundle_note}

-- A compare-and-set channel's own bookkeeping (moved.lua): units it was seen to sell on its
-- own before this order arrived are set aside for it in `reserved`, and this order takes
-- them first, so it is never refused for units kept for this very sale; its other units
-- (from a hold it claimed, or from available) count as its own sales since its known count,
-- and units an edit gives back as its own restock (channel_own).
local results = {}
local cas_key = prefix .. 'deliv:cas:' .. channel
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
        emit(outbox, ctx, 'commit', c, {reserved = -x, committed = x},
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

for _, line in ipairs(req_lines) do
  local sku, loc, q = line_parts(line)
  if not is_name(sku) or not is_name(loc) or not is_count(q, 1) then
    -- Python skips such lines already (same definition); one must never void the others.
    results[#results + 1] = {sku = type(sku) == 'string' and string.sub(sku, 1, 128) or '',
      location = type(loc) == 'string' and string.sub(loc, 1, 64) or '',
      qty = is_count(q, -MAX_QTY) and q or 0, status = 'invalid'}
  else
    for _, s in ipairs(sources) do
      if q == 0 then break end
      if s.sku == sku and s.qty > 0 then
        local x = math.min(q, s.qty)
        s.qty = s.qty - x
        q = q - x
        if s.state == 'reserved' then
          local c = cell_read(cells, prefix, s.sku, s.loc)
          if c then
            local r = math.min(x, c.reserved)
            c.reserved = c.reserved - r
            c.committed = c.committed + x
            emit(outbox, ctx, 'commit', c, {reserved = -r, committed = x}, 'order placed from hold')
          end
          channel_own(prefix, channel, sku, s.loc, x)
          entries[#entries + 1] = {sku = sku, location = s.loc, qty = x, open = x,
            fulfilled = 0, restocked = 0}
        end
        results[#results + 1] = {sku = sku, location = s.loc, qty = x, status = 'held'}
      end
    end
    local c = q > 0 and cell_read(cells, prefix, sku, loc)
    q = q - (q > 0 and take_set_aside(sku, loc, q) or 0)
    if q > 0 then
      local status = 'committed'
      if not c then
        status = 'unknown_sku'
      elseif not can_take(c, q) then
        status = 'oversell_rejected'
        emit(outbox, ctx, 'oversell_rejected', c, {},
          'requested ' .. q .. ', available ' .. math.max(available(c), 0))
      else
        c.committed = c.committed + q
        channel_own(prefix, channel, sku, loc, q)
        emit(outbox, ctx, 'commit', c, {committed = q})
        preorder_note(prefix, c, 'order:' .. req.order_id, q)
        entries[#entries + 1] = {sku = sku, location = loc, qty = q, open = q, fulfilled = 0,
          restocked = 0}
      end
      results[#results + 1] = {sku = sku, location = loc, qty = q, status = status}
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
      emit(outbox, ctx, 'release', c, {reserved = -r}, 'hold units not in the order')
      given_back[#given_back + 1] = {s.sku, s.loc, s.qty}
    elseif c and math.min(s.qty, s.open) > 0 then
      -- Units that are not open were matched first: what is left unmatched is open units.
      local q = math.min(s.qty, s.open)
      local x = math.min(q, c.committed)
      c.committed = c.committed - x
      s.line.open = s.line.open - q
      s.line.qty = s.line.qty - q
      emit(outbox, ctx, 'cancel', c, {committed = -x}, 'units no longer in the order')
      channel_own(prefix, channel, s.sku, s.loc, -x)
    end
  end
end
for _, c in pairs(cells) do
  if c then cell_write(c) end
end

local reply = cjson.encode({order_id = req.order_id,
  hold_id = claimed and req.hold_id or nil, lines = results})
if rec_fp then
  redis.call('HSET', order_key, 'status', 'open', 'channel_fp', req.fp, 'reply', reply,
    'lines', cjson.encode(entries), 'channel', channel, 'state_ms', math.max(state_ms, rec_state))
  redis.call('HDEL', order_key, 'cancel_reply')
else
  redis.call('HSET', order_key, 'status', 'open', 'fp', req.fp, 'reply', reply,
    'lines', cjson.encode(entries), 'channel', channel, 'state_ms', state_ms)
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
