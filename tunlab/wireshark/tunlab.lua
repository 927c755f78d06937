-- tunlab.lua: a Wireshark dissector for the wire formats of tunlab's relay (tunlab relay / tunlab labs).
--
--   UDP, plain:   one IPv4/IPv6 packet per datagram (socat's format); a capture on a veth may hold several
--                 glued together (one UDP GSO send): each is decoded.
--   UDP, chunks:  a 12-byte header (magic A7 1B, version/type 0x11, queue, packet id, index, count, csize)
--                 and a piece of a *stream* = 10-byte virtio-net header + one (GSO) packet; chunks are
--                 reassembled per sender, queue and packet id, then the inner packet is decoded.
--   UDP, hellos:  a 44-byte IPv4 packet, protocol 253, source and destination 0.0.0.0, a wrong header
--                 checksum on purpose, then "TUNLAB\0H", kind, version, caps, session, echo, chunk size.
--   TCP:          2-byte big-endian length + one packet (TunConnector's framing), over TCP segments.
--   UDP, sealed:  keyed links (--psk-file): 0x01 hello (58 bytes: version, time, nonces, tag) or 0x02 data
--                 (key id, counter, ChaCha20-Poly1305 ciphertext + tag): shown as "sealed", not decoded
--                 (docs/sealing.md; `tunlab capture --inner` and the per-hop checks open them with the keylog).
--
-- Use:   wireshark -X lua_script:tunlab.lua link_sender-vnf1.pcap
--        tshark -X lua_script:tunlab.lua -r link_sender-vnf1.pcap
-- or copy it into your personal plugins folder (Help > About Wireshark > Folders > Personal Lua Plugins).
-- `tunlab pcap wireshark` prints this file's path. Ports: Edit > Preferences > Protocols > TUNLAB
-- (default 55555 for UDP and TCP, the lab's port); chunks and hellos are also found on any UDP port.
-- The wire format: docs/fastpath.md in tunlab's source. Licence: GPL-2.0-or-later, like tunlab.

local tunlab = Proto("tunlab", "tunlab relay")
local tunlab_tcp = Proto("tunlab_tcp", "tunlab relay TCP framing")

local KINDS = { [1] = "hello", [2] = "reply" }
local GSO = { [0] = "none", [1] = "TCPv4", [3] = "UDP", [4] = "TCPv6", [5] = "UDP_L4" }

local f = tunlab.fields
f.what = ProtoField.string("tunlab.what", "Datagram")
f.magic = ProtoField.uint16("tunlab.magic", "Magic", base.HEX)
f.vertype = ProtoField.uint8("tunlab.vertype", "Version/type", base.HEX)
f.queue = ProtoField.uint8("tunlab.queue", "Queue", base.DEC)
f.pid = ProtoField.uint32("tunlab.packet_id", "Packet id", base.DEC)
f.index = ProtoField.uint8("tunlab.index", "Chunk index", base.DEC)
f.count = ProtoField.uint8("tunlab.count", "Chunk count", base.DEC)
f.csize = ProtoField.uint16("tunlab.csize", "Chunk size", base.DEC)
f.chunk = ProtoField.bytes("tunlab.chunk", "Chunk payload")
f.stream_len = ProtoField.uint32("tunlab.stream_len", "Stream length", base.DEC)
f.vnet_flags = ProtoField.uint8("tunlab.vnet.flags", "virtio-net flags", base.HEX)
f.vnet_gso = ProtoField.uint8("tunlab.vnet.gso_type", "virtio-net GSO type", base.HEX)
f.vnet_hdr_len = ProtoField.uint16("tunlab.vnet.hdr_len", "virtio-net header length", base.DEC)
f.vnet_gso_size = ProtoField.uint16("tunlab.vnet.gso_size", "virtio-net GSO size", base.DEC)
f.vnet_csum_start = ProtoField.uint16("tunlab.vnet.csum_start", "virtio-net csum start", base.DEC)
f.vnet_csum_offset = ProtoField.uint16("tunlab.vnet.csum_offset", "virtio-net csum offset", base.DEC)
f.hello_kind = ProtoField.uint8("tunlab.hello.kind", "Hello kind", base.DEC, KINDS)
f.hello_version = ProtoField.uint8("tunlab.hello.version", "Hello version", base.DEC)
f.hello_caps = ProtoField.uint16("tunlab.hello.caps", "Datapaths (bit 0 plain, bit 1 gso)", base.HEX)
f.hello_session = ProtoField.uint32("tunlab.hello.session", "Session", base.HEX)
f.hello_echo = ProtoField.uint32("tunlab.hello.echo", "Echo", base.HEX)
f.hello_segment = ProtoField.uint16("tunlab.hello.segment", "Chunk datagram size", base.DEC)
f.frame_len = ProtoField.uint16("tunlab.frame_len", "Frame length", base.DEC)
f.sealed = ProtoField.string("tunlab.sealed", "Sealed")
f.seal_key_id = ProtoField.uint32("tunlab.sealed.key_id", "Key id", base.HEX)
f.seal_counter = ProtoField.uint64("tunlab.sealed.counter", "Counter", base.DEC)
f.seal_ciphertext = ProtoField.bytes("tunlab.sealed.ciphertext", "Ciphertext and tag")
f.seal_time = ProtoField.uint64("tunlab.sealed.hello.time", "Hello time (ns)", base.DEC)
f.seal_nonce = ProtoField.bytes("tunlab.sealed.hello.nonce", "Sender nonce")
f.seal_echo = ProtoField.bytes("tunlab.sealed.hello.echo", "Echo of the peer's nonce")
f.seal_tag = ProtoField.bytes("tunlab.sealed.hello.tag", "Tag (HMAC-SHA256, 16 bytes)")

tunlab.prefs.udp_ports = Pref.range("UDP ports", "55555", "UDP ports of tunlab relays", 65535)
tunlab.prefs.tcp_ports = Pref.range("TCP ports", "55555", "TCP ports of tunlab relays (length-framed)", 65535)

local ip = Dissector.get("ip")
local ipv6 = Dissector.get("ipv6")
local eth = Dissector.get("eth_withoutfcs")
-- NSH mode (issue 18): VXLAN-GPE + NSH on the relays' port, handed to what Wireshark runs on UDP 4790
local gpe = DissectorTable.get("udp.port"):get_dissector(4790)

-- chunk reassembly, filled on the first pass: partial streams, and the streams each frame completed
local partial = {}
local completed = {}

function tunlab.init()
    partial = {}
    completed = {}
end

local function nibble(tvb, off)
    return math.floor(tvb(off, 1):uint() / 16)
end

-- one packet as the TUN/TAP device had it: IPv4, IPv6, or (a TAP's) Ethernet frame
local function inner(tvb, pinfo, tree)
    if tvb:len() == 0 then return end
    local v = nibble(tvb, 0)
    if v == 4 then
        ip:call(tvb, pinfo, tree)
    elseif v == 6 then
        ipv6:call(tvb, pinfo, tree)
    else
        eth:call(tvb, pinfo, tree)
    end
end

local function stream(tvb, pinfo, tree)
    local t = tree:add(tunlab, tvb(), "tunlab stream (virtio-net header + packet)")
    t:add(f.stream_len, tvb:len())
    if tvb:len() < 10 then return end
    t:add(f.vnet_flags, tvb(0, 1))
    t:add(f.vnet_gso, tvb(1, 1)):append_text(" (" .. (GSO[tvb(1, 1):uint() % 128] or "?") .. ")")
    t:add_le(f.vnet_hdr_len, tvb(2, 2))
    t:add_le(f.vnet_gso_size, tvb(4, 2))
    t:add_le(f.vnet_csum_start, tvb(6, 2))
    t:add_le(f.vnet_csum_offset, tvb(8, 2))
    inner(tvb(10):tvb(), pinfo, tree)
end

local function is_hello(tvb, off, rest)
    return rest >= 44 and tvb(off, 1):uint() == 0x45 and tvb(off + 9, 1):uint() == 253
        and tvb(off + 20, 8):string() == "TUNLAB\0H"
end

local function hello(tvb, pinfo, tree)
    local t = tree:add(tunlab, tvb(), "tunlab hello")
    local kind = KINDS[tvb(28, 1):uint()] or "?"
    t:add(f.what, kind .. " (datapath negotiation; IPv4 header checksum wrong on purpose)")
    t:add(f.hello_kind, tvb(28, 1))
    t:add(f.hello_version, tvb(29, 1))
    t:add(f.hello_caps, tvb(30, 2))
    t:add(f.hello_session, tvb(32, 4))
    t:add(f.hello_echo, tvb(36, 4))
    t:add(f.hello_segment, tvb(40, 2))
    return kind
end

local function chunk(tvb, pinfo, tree)
    local queue, pid = tvb(3, 1):uint(), tvb(4, 4):uint()
    local index, count, csize = tvb(8, 1):uint(), tvb(9, 1):uint(), tvb(10, 2):uint()
    local t = tree:add(tunlab, tvb(), string.format("tunlab chunk %d/%d of packet %d (queue %d)",
        index + 1, count, pid, queue))
    t:add(f.magic, tvb(0, 2))
    t:add(f.vertype, tvb(2, 1))
    t:add(f.queue, tvb(3, 1))
    t:add(f.pid, tvb(4, 4))
    t:add(f.index, tvb(8, 1))
    t:add(f.count, tvb(9, 1))
    t:add(f.csize, tvb(10, 2))
    if tvb:len() > 12 then t:add(f.chunk, tvb(12)) end
    if count == 1 then
        if tvb:len() > 12 then stream(tvb(12):tvb(), pinfo, tree) end
        return
    end
    if not pinfo.visited and tvb:len() > 12 then
        local key = tostring(pinfo.src) .. ":" .. pinfo.src_port .. "/" .. queue .. "/" .. pid
        local s = partial[key]
        if s == nil or s.count ~= count then
            s = { count = count, got = 0, parts = {} }
            partial[key] = s
        end
        if s.parts[index] == nil then
            s.parts[index] = tvb(12):bytes()
            s.got = s.got + 1
        end
        if s.got == count then
            local whole = ByteArray.new()
            for i = 0, count - 1 do whole = whole .. s.parts[i] end
            partial[key] = nil
            local list = completed[pinfo.number] or {}
            list[#list + 1] = whole
            completed[pinfo.number] = list
        end
    end
end

-- a keyed link's datagram: a sealed hello (58 bytes) or sealed data (13-byte header + ciphertext + 16-byte tag)
local function is_sealed(tvb, off, rest)
    local b0 = tvb(off, 1):uint()
    return (b0 == 0x01 and rest == 58 and tvb(off + 1, 1):uint() == 0x01) or (b0 == 0x02 and rest >= 29)
end

local function sealed(tvb, pinfo, tree)
    if tvb(0, 1):uint() == 0x01 then
        local t = tree:add(tunlab, tvb(), "tunlab sealed hello (keyed link)")
        t:add(f.sealed, "hello")
        t:add(f.seal_time, tvb(2, 8))
        t:add(f.seal_nonce, tvb(10, 16))
        t:add(f.seal_echo, tvb(26, 16))
        t:add(f.seal_tag, tvb(42, 16))
        return "sealed hello"
    end
    local t = tree:add(tunlab, tvb(), string.format("tunlab sealed data (keyed link): %d bytes sealed",
        tvb:len() - 29))
    t:add(f.sealed, "data")
    t:add(f.seal_key_id, tvb(1, 4))
    t:add(f.seal_counter, tvb(5, 8))
    t:add(f.seal_ciphertext, tvb(13))
    return "sealed data"
end

-- every tunlab datagram glued into one UDP payload (a veth capture of one UDP GSO send)
local function datagrams(tvb, pinfo, tree)
    local off, n = 0, tvb:len()
    local kinds = {}
    while off < n do
        local rest = n - off
        local b0 = tvb(off, 1):uint()
        local len
        if off == 0 and is_sealed(tvb, off, rest) then
            kinds[sealed(tvb, pinfo, tree)] = true
            break
        elseif b0 == 0xA7 and rest >= 12 and tvb(off + 1, 1):uint() == 0x1B then
            local index, count, csize = tvb(off + 8, 1):uint(), tvb(off + 9, 1):uint(), tvb(off + 10, 2):uint()
            len = rest
            if index + 1 < count and 12 + csize < rest then len = 12 + csize end
            chunk(tvb(off, len):tvb(), pinfo, tree)
            kinds["chunks"] = true
        elseif is_hello(tvb, off, rest) then
            len = 44
            kinds[hello(tvb(off, 44):tvb(), pinfo, tree)] = true
        elseif nibble(tvb, off) == 4 and rest >= 20 then
            len = tvb(off + 2, 2):uint()
            if len < 20 or len > rest then len = rest end
            ip:call(tvb(off, len):tvb(), pinfo, tree)
            kinds["plain"] = true
        elseif nibble(tvb, off) == 6 and rest >= 40 then
            len = 40 + tvb(off + 4, 2):uint()
            if len > rest then len = rest end
            ipv6:call(tvb(off, len):tvb(), pinfo, tree)
            kinds["plain"] = true
        else
            tree:add(tunlab, tvb(off), "not a tunlab datagram (a relay drops it as not_ip)")
            break
        end
        off = off + len
    end
    local done = completed[pinfo.number]
    if done then
        for i, whole in ipairs(done) do
            stream(whole:tvb("tunlab stream " .. i), pinfo, tree)
        end
    end
    local names = {}
    for k, _ in pairs(kinds) do names[#names + 1] = k end
    table.sort(names)
    return table.concat(names, "+")
end

-- a VXLAN-GPE header announcing NSH: reserved and version bits 0 (first byte < 16), P bit set, next protocol 4
local function is_gpe_nsh(tvb)
    if tvb:len() < 16 then return false end
    local b = tvb(0, 1):uint()
    return b < 16 and b % 8 >= 4 and tvb(3, 1):uint() == 4
end

function tunlab.dissector(tvb, pinfo, tree)
    if tvb:len() == 0 then return 0 end
    if gpe ~= nil and is_gpe_nsh(tvb) then return gpe:call(tvb, pinfo, tree) end
    local what = datagrams(tvb, pinfo, tree)
    if what == "chunks" or what == "hello" or what == "reply" then
        pinfo.cols.protocol:prepend("TUNLAB/")  -- the inner protocol, if any, stays visible
        if what ~= "chunks" then pinfo.cols.info = "tunlab " .. what end
    elseif what == "sealed data" or what == "sealed hello" then
        pinfo.cols.protocol = "TUNLAB"
        pinfo.cols.info = "tunlab " .. what .. " (keyed link: authenticated and encrypted)"
    end
    return tvb:len()
end

local function heuristic(tvb, pinfo, tree)
    local n = tvb:len()
    if n >= 12 and tvb(0, 1):uint() == 0xA7 and tvb(1, 1):uint() == 0x1B and tvb(2, 1):uint() == 0x11 then
        tunlab.dissector(tvb, pinfo, tree)
        return true
    end
    if is_hello(tvb, 0, n) then
        tunlab.dissector(tvb, pinfo, tree)
        return true
    end
    return false
end

local function frame_len(tvb, pinfo, offset)
    return tvb(offset, 2):uint() + 2
end

local function frame(tvb, pinfo, tree)
    local t = tree:add(tunlab_tcp, tvb(), "tunlab TCP frame")
    t:add(f.frame_len, tvb(0, 2))
    if tvb:len() > 2 then inner(tvb(2):tvb(), pinfo, tree) end
    return tvb:len()
end

function tunlab_tcp.dissector(tvb, pinfo, tree)
    dissect_tcp_pdus(tvb, tree, 2, frame_len, frame)
    return tvb:len()
end

local udp_ports, tcp_ports = "55555", "55555"

local function register()
    local udp, tcp = DissectorTable.get("udp.port"), DissectorTable.get("tcp.port")
    udp:remove(udp_ports, tunlab)
    tcp:remove(tcp_ports, tunlab_tcp)
    udp_ports, tcp_ports = tunlab.prefs.udp_ports, tunlab.prefs.tcp_ports
    udp:add(udp_ports, tunlab)
    tcp:add(tcp_ports, tunlab_tcp)
end

function tunlab.prefs_changed()
    register()
end

DissectorTable.get("udp.port"):add(udp_ports, tunlab)
DissectorTable.get("tcp.port"):add(tcp_ports, tunlab_tcp)
tunlab:register_heuristic("udp", heuristic)
