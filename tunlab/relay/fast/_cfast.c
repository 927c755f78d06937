/* The compiled hot loops of the fast datapath (issue 20): the same wire format as encap.py / gro.py /
 * framing.py, the same counters, the GIL released while a loop runs.
 *
 * A Pump holds what the loops need (device and socket descriptors, the buffers the Python pumps own,
 * the route table, each peer's address and datapath) and counts into C counters that the Python side
 * takes (and zeroes) after every call: see tunlab/relay/fast/compiled.py. Whatever a loop cannot do
 * (a hello, a source it does not know, chunks to reassemble, a peer whose link stages need Python)
 * ends the loop with a status that tells Python what is left in the buffer.
 *
 * Every length read from the wire or the device is checked before it is used: no input crashes it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define VNET_LEN 10
#define HDR_LEN 12
#define MAX_COUNT 255
#define MIN_CSIZE 512
#define MAX_STREAM (65536 + VNET_LEN + 64)
#define MAX_PEERS 64
#define MAX_ROUTES 1024
#define UDP_MAX_PAYLOAD 65507
#define UDP_MAX_SEGS 64
#define SOL_UDP_ 17
#define UDP_SEGMENT_ 103
#define UDP_GRO_ 104
#define MAGIC0 0xA7
#define MAGIC1 0x1B
#define VER_TYPE 0x11
#define TCP_ACK 0x10
#define TCP_PSH 0x08
#define MAX_IOV 260
#define HELLO_LEN 44
#define HELLO_PROTO 253

/* status of a loop */
enum { ST_DRAINED = 0, ST_MORE = 1, ST_PY = 2, ST_LEFTOVER = 3, ST_DEV_ERROR = 4, ST_RECV_ERROR = 5 };

/* drop reasons, in the order of DROP_NAMES */
enum {
    D_SHORT_READ, D_NO_ROUTE, D_PEER_DOWN, D_BACKLOG, D_SEND_ERROR, D_TOO_BIG, D_EMPTY, D_NOT_IP,
    D_TRUNCATED, D_DEV_WRITE_ERROR, D_RECV_ERROR, N_DROPS
};
static const char *DROP_NAMES[N_DROPS] = {
    "short_read", "no_route", "peer_down", "backlog", "send_error", "too_big", "empty", "not_ip",
    "truncated", "dev_write_error", "recv_error",
};

/* counters, in the order of COUNTER_NAMES */
enum {
    C_DEV_RX_P, C_DEV_RX_B, C_DEV_TX_P, C_DEV_TX_B, C_READS, C_SEGMENTS, C_DATAGRAMS_TX, C_SENDS,
    C_DATAGRAMS_RX, C_RECEIVES, C_WHOLE, C_MERGED, N_COUNTERS
};
static const char *COUNTER_NAMES[N_COUNTERS] = {
    "dev_rx_packets", "dev_rx_bytes", "dev_tx_packets", "dev_tx_bytes", "reads", "segments",
    "datagrams_tx", "sends", "datagrams_rx", "receives", "whole", "merged",
};

typedef struct {
    struct sockaddr_storage addr;
    socklen_t alen;
    int has_addr;
    int gso;     /* send it chunks (else plain datagrams) */
    int python;  /* its link needs the Python datapath (stages the compiled loops cannot run) */
    uint64_t rxp, rxb, txp, txb;
} CPeer;

typedef struct {
    uint8_t net[16];
    uint8_t mask[16];
    int peer;
} CRoute;

/* ------------------------------------------------------------------------------------------------ */
/* pure helpers: the same rules as framing.check_l3/check_l2, gro.py and encap.gro_columns_ok         */

static int check_pkt(const uint8_t *p, Py_ssize_t n, Py_ssize_t limit, int tap)
{
    if (n <= 0) return D_EMPTY;
    if (n > limit) return D_TOO_BIG;
    if (tap) return n < 14 ? D_TRUNCATED : -1;
    switch (p[0] >> 4) {
    case 4: return n >= 20 ? -1 : D_TRUNCATED;
    case 6: return n >= 40 ? -1 : D_TRUNCATED;
    default: return D_NOT_IP;
    }
}

static inline uint16_t be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* encap.gro_columns_ok: the chunk count when buf[:end] (datagrams of `segment` bytes) is exactly one
 * whole stream in order, else 0 */
static int columns_ok(const uint8_t *buf, Py_ssize_t end, Py_ssize_t segment)
{
    if (end <= HDR_LEN || segment <= HDR_LEN) return 0;
    Py_ssize_t n = (end + segment - 1) / segment;
    if (n > MAX_COUNT || end - (n - 1) * segment <= HDR_LEN) return 0;
    if (buf[0] != MAGIC0 || buf[1] != MAGIC1 || buf[2] != VER_TYPE || buf[8] != 0 || buf[9] != n) return 0;
    Py_ssize_t csize = be16(buf + 10);
    if (n == 1) return end - HDR_LEN <= csize ? 1 : 0;
    if (csize != segment - HDR_LEN) return 0;
    for (Py_ssize_t i = 1; i < n; i++) {
        const uint8_t *h = buf + i * segment;
        if (h[8] != i || h[9] != n || h[0] != buf[0] || h[6] != buf[6] || h[7] != buf[7]) return 0;
    }
    return (int)n;
}

/* gro.tcp_start */
static int tcp_start(const uint8_t *p, Py_ssize_t size)
{
    if (size < 40 || p[0] != 0x45 || p[9] != 6 || (p[6] & 0x3F) || p[7]) return 0;
    int hl = 20 + ((p[32] >> 4) << 2);
    if (hl < 40 || hl >= size || p[33] != TCP_ACK) return 0;
    if (be16(p + 2) != size) return 0;
    return hl;
}

/* the header bytes every segment of a run shares (gro._equal_columns) */
static int same_header(const uint8_t *a, const uint8_t *b, int hl)
{
    return a[0] == b[0] && a[1] == b[1] && memcmp(a + 6, b + 6, 4) == 0 && memcmp(a + 12, b + 12, 12) == 0
        && memcmp(a + 28, b + 28, 5) == 0 && a[34] == b[34] && a[35] == b[35]
        && memcmp(a + 38, b + 38, (size_t)(hl - 38)) == 0;
}

/* gro.whole_batch */
static int whole_batch(const uint8_t *buf, Py_ssize_t end, Py_ssize_t stride)
{
    if (stride <= 0) return 0;
    Py_ssize_t k = (end + stride - 1) / stride;
    if (k < 2) return 0;
    int hl = tcp_start(buf, stride);
    Py_ssize_t last = (k - 1) * stride;
    if (!hl || end - last <= hl || hl > 80) return 0;
    uint32_t seq0 = be32(buf + 24);
    Py_ssize_t pay = stride - hl;
    if ((uint64_t)seq0 + (uint64_t)(k - 1) * (uint64_t)pay > 0xFFFFFFFFull) return 0;
    for (Py_ssize_t i = 1; i < k; i++) {
        const uint8_t *p = buf + i * stride;
        if (!same_header(buf, p, hl)) return 0;
        if (i < k - 1) {
            if (p[2] != buf[2] || p[3] != buf[3] || p[33] != TCP_ACK) return 0;
        }
        if (be32(p + 24) != (uint32_t)(seq0 + i * pay)) return 0;
    }
    const uint8_t *l = buf + last;
    if (be16(l + 2) != end - last) return 0;
    if (l[33] != TCP_ACK && l[33] != (TCP_ACK | TCP_PSH)) return 0;
    return hl;
}

/* gro.merge_run: how many packets from `start` form one run; *hl_out its header length */
static Py_ssize_t merge_run(const uint8_t *buf, Py_ssize_t start, Py_ssize_t stride, Py_ssize_t count,
                            Py_ssize_t end, int *hl_out)
{
    Py_ssize_t size0 = stride < end - start ? stride : end - start;
    int hl = tcp_start(buf + start, size0);
    *hl_out = hl;
    if (!hl || count < 2) return 1;
    const uint8_t *s = buf + start;
    Py_ssize_t pay = size0 - hl;
    uint32_t seq = be32(s + 24);
    Py_ssize_t n = 1, off = start + stride;
    while (n < count && off < end) {
        Py_ssize_t size = stride < end - off ? stride : end - off;
        if (size <= hl || size - hl > pay || (size != stride && off + size != end)) break;
        const uint8_t *p = buf + off;
        if (!same_header(s, p, hl)) break;
        uint8_t flags = p[33];
        int psh = flags == (TCP_ACK | TCP_PSH);
        if (flags != TCP_ACK && !psh) break;
        if (be16(p + 2) != size) break;
        seq += (uint32_t)pay;
        if (be32(p + 24) != seq) break;
        n++;
        off += stride;
        if (psh || size != stride) break;
    }
    return n;
}

static uint32_t fold(uint32_t t)
{
    while (t >> 16) t = (t & 0xFFFF) + (t >> 16);
    return t;
}

/* gro.super_header: the virtio header (10 bytes) and the IP+TCP header (hl bytes) of a merged run */
static void super_header(const uint8_t *first, int hl, Py_ssize_t total_payload, Py_ssize_t mss, int psh,
                         uint8_t *vnet, uint8_t *hdr)
{
    memcpy(hdr, first, (size_t)hl);
    Py_ssize_t total = hl + total_payload;
    hdr[2] = (uint8_t)(total >> 8);
    hdr[3] = (uint8_t)total;
    hdr[10] = hdr[11] = 0;
    uint32_t sum = 0;
    for (int i = 0; i < 20; i += 2) sum += (uint32_t)(hdr[i] << 8 | hdr[i + 1]);
    uint16_t csum = (uint16_t)(~fold(sum) & 0xFFFF);
    hdr[10] = (uint8_t)(csum >> 8);
    hdr[11] = (uint8_t)csum;
    if (psh) hdr[33] |= TCP_PSH;
    uint32_t tcp_len = (uint32_t)(total - 20);
    uint32_t pseudo = fold((uint32_t)be16(hdr + 12) + be16(hdr + 14) + be16(hdr + 16) + be16(hdr + 18) + 6 + tcp_len);
    hdr[36] = (uint8_t)(pseudo >> 8);
    hdr[37] = (uint8_t)pseudo;
    /* <BBHHHH: NEEDS_CSUM, TCPV4, hdr_len, gso_size, csum_start 20, csum_offset 16 */
    vnet[0] = 1; vnet[1] = 1;
    vnet[2] = (uint8_t)hl; vnet[3] = (uint8_t)(hl >> 8);
    vnet[4] = (uint8_t)mss; vnet[5] = (uint8_t)(mss >> 8);
    vnet[6] = 20; vnet[7] = 0; vnet[8] = 16; vnet[9] = 0;
}

/* stamp packet id and count into the headers of `count` chunks laid out every `segment` bytes */
static void stamp(uint8_t *buf, Py_ssize_t segment, int count, uint32_t pid)
{
    for (int i = 0; i < count; i++) {
        uint8_t *h = buf + (Py_ssize_t)i * segment;
        h[4] = (uint8_t)(pid >> 24); h[5] = (uint8_t)(pid >> 16); h[6] = (uint8_t)(pid >> 8); h[7] = (uint8_t)pid;
        h[9] = (uint8_t)count;
    }
}

/* ------------------------------------------------------------------------------------------------ */
/* the Pump                                                                                          */

typedef struct {
    PyObject_HEAD
    int dev, sock, v6, tap;
    Py_ssize_t segment, csize, max_count, limit, stride, nslots;
    Py_buffer txbuf, rxbuf, pbuf, scratch, overflow;
    int have_tx, have_rx, have_plain;
    CPeer peers[MAX_PEERS];
    int npeers, fixed, has_routes;
    CRoute r4[MAX_ROUTES], r6[MAX_ROUTES];
    int n4, n6;
    uint64_t c[N_COUNTERS];
    uint64_t drops[N_DROPS];
    /* what a loop left for Python */
    Py_ssize_t left_n, left_seg, left_off;
    int left_peer, left_trunc;
    struct sockaddr_storage left_addr;
    socklen_t left_alen;
    int left_errno;
} Pump;

/* a Pump made without __init__ (Pump.__new__) has no buffers: refuse to run it */
#define REQUIRE_INIT(self)                                                          \
    do {                                                                            \
        if (!(self)->have_plain) {                                                  \
            PyErr_SetString(PyExc_RuntimeError, "Pump is not initialised");         \
            return NULL;                                                            \
        }                                                                           \
    } while (0)

static int route_lookup(Pump *self, const uint8_t *pkt, Py_ssize_t n)
{
    if (self->fixed >= 0) return self->fixed;
    if (!self->has_routes) return -1;
    const uint8_t *dst = NULL;
    int v6 = 0;
    static const uint8_t zero4[4] = {0, 0, 0, 0};
    if (self->tap) {
        if (n >= 14) {
            uint16_t et = be16(pkt + 12);
            if (et == 0x0800 && n - 14 >= 20 && pkt[14] >> 4 == 4) dst = pkt + 14 + 16;
            else if (et == 0x0800 && n - 14 >= 40 && pkt[14] >> 4 == 6) { dst = pkt + 14 + 24; v6 = 1; }
            else if (et == 0x86DD && n - 14 >= 20 && pkt[14] >> 4 == 4) dst = pkt + 14 + 16;
            else if (et == 0x86DD && n - 14 >= 40 && pkt[14] >> 4 == 6) { dst = pkt + 14 + 24; v6 = 1; }
            else if (et == 0x0806 && n >= 42) dst = pkt + 38;
        }
    } else {
        if (n >= 20 && pkt[0] >> 4 == 4) dst = pkt + 16;
        else if (n >= 40 && pkt[0] >> 4 == 6) { dst = pkt + 24; v6 = 1; }
    }
    if (dst == NULL) dst = zero4;
    if (v6) {
        for (int i = 0; i < self->n6; i++) {
            CRoute *r = &self->r6[i];
            int ok = 1;
            for (int j = 0; j < 16 && ok; j++) ok = (dst[j] & r->mask[j]) == r->net[j];
            if (ok) return r->peer;
        }
    } else {
        for (int i = 0; i < self->n4; i++) {
            CRoute *r = &self->r4[i];
            if ((dst[0] & r->mask[0]) == r->net[0] && (dst[1] & r->mask[1]) == r->net[1]
                && (dst[2] & r->mask[2]) == r->net[2] && (dst[3] & r->mask[3]) == r->net[3])
                return r->peer;
        }
    }
    return -1;
}

static int same_addr(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family) return 0;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
        return x->sin6_port == y->sin6_port && memcmp(&x->sin6_addr, &y->sin6_addr, 16) == 0;
    }
    return 0;
}

static int peer_by_addr(Pump *self, const struct sockaddr_storage *a)
{
    for (int i = 0; i < self->npeers; i++)
        if (self->peers[i].has_addr && same_addr(&self->peers[i].addr, a)) return i;
    return -1;
}

static void Pump_dealloc(Pump *self)
{
    if (self->have_tx) PyBuffer_Release(&self->txbuf);
    if (self->have_rx) PyBuffer_Release(&self->rxbuf);
    if (self->have_plain) {
        PyBuffer_Release(&self->pbuf);
        PyBuffer_Release(&self->scratch);
        PyBuffer_Release(&self->overflow);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Pump(dev_fd, sock_fd, v6, tap, segment, limit, txbuf, rxbuf, pbuf, stride, scratch, overflow, npeers) */
static int Pump_init(Pump *self, PyObject *args, PyObject *kw)
{
    PyObject *tx, *rx, *pb, *sc, *ov;
    int npeers;
    if (!PyArg_ParseTuple(args, "iippnnOOOnOOi", &self->dev, &self->sock, &self->v6, &self->tap, &self->segment,
                          &self->limit, &tx, &rx, &pb, &self->stride, &sc, &ov, &npeers))
        return -1;
    if (self->have_tx || self->have_rx || self->have_plain) {
        PyErr_SetString(PyExc_RuntimeError, "Pump is already initialised");
        return -1;
    }
    if (npeers < 0 || npeers > MAX_PEERS) {
        PyErr_Format(PyExc_ValueError, "at most %d peers", MAX_PEERS);
        return -1;
    }
    if (self->segment < HDR_LEN + MIN_CSIZE || self->segment > 65535 || self->limit <= 0 || self->stride <= 0) {
        PyErr_SetString(PyExc_ValueError, "segment, limit or stride out of range");
        return -1;
    }
    self->csize = self->segment - HDR_LEN;
    if (PyObject_GetBuffer(tx, &self->txbuf, PyBUF_WRITABLE) < 0) return -1;
    self->have_tx = 1;
    if (PyObject_GetBuffer(rx, &self->rxbuf, PyBUF_WRITABLE) < 0) return -1;
    self->have_rx = 1;
    if (PyObject_GetBuffer(pb, &self->pbuf, PyBUF_WRITABLE) < 0) return -1;
    if (PyObject_GetBuffer(sc, &self->scratch, PyBUF_WRITABLE) < 0) { PyBuffer_Release(&self->pbuf); return -1; }
    if (PyObject_GetBuffer(ov, &self->overflow, PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&self->pbuf);
        PyBuffer_Release(&self->scratch);
        return -1;
    }
    self->have_plain = 1;
    self->max_count = self->txbuf.len / self->segment;
    if (self->max_count > MAX_COUNT) self->max_count = MAX_COUNT;
    if (self->max_count < 1 || self->scratch.len < VNET_LEN || self->rxbuf.len < 65536 + HDR_LEN) {
        PyErr_SetString(PyExc_ValueError, "buffers too small");
        return -1;
    }
    self->nslots = self->pbuf.len / self->stride;
    if (self->nslots > UDP_MAX_SEGS) self->nslots = UDP_MAX_SEGS;
    if (self->nslots < 1) {
        PyErr_SetString(PyExc_ValueError, "plain buffer smaller than one slot");
        return -1;
    }
    self->npeers = npeers;
    self->fixed = -1;
    return 0;
}

static int parse_addr(PyObject *addr, int v6, struct sockaddr_storage *out, socklen_t *alen)
{
    const char *host;
    int port;
    memset(out, 0, sizeof(*out));
    if (!PyArg_ParseTuple(addr, "si", &host, &port)) return -1;
    if (port < 0 || port > 65535) {
        PyErr_SetString(PyExc_ValueError, "port out of range");
        return -1;
    }
    if (v6) {
        struct sockaddr_in6 *s = (void *)out;
        s->sin6_family = AF_INET6;
        s->sin6_port = htons((uint16_t)port);
        if (inet_pton(AF_INET6, host, &s->sin6_addr) != 1) {
            /* an IPv4 peer on an IPv6 socket: v4-mapped */
            struct in_addr a4;
            if (inet_pton(AF_INET, host, &a4) != 1) goto bad;
            memset(&s->sin6_addr, 0, 16);
            s->sin6_addr.s6_addr[10] = s->sin6_addr.s6_addr[11] = 0xFF;
            memcpy(&s->sin6_addr.s6_addr[12], &a4, 4);
        }
        *alen = sizeof(struct sockaddr_in6);
    } else {
        struct sockaddr_in *s = (void *)out;
        s->sin_family = AF_INET;
        s->sin_port = htons((uint16_t)port);
        if (inet_pton(AF_INET, host, &s->sin_addr) != 1) goto bad;
        *alen = sizeof(struct sockaddr_in);
    }
    return 0;
bad:
    PyErr_Format(PyExc_ValueError, "not an address: %s", host);
    return -1;
}

/* set_peer(index, addr or None, gso, python) */
static PyObject *Pump_set_peer(Pump *self, PyObject *args)
{
    REQUIRE_INIT(self);
    int i, gso, python;
    PyObject *addr;
    if (!PyArg_ParseTuple(args, "iOpp", &i, &addr, &gso, &python)) return NULL;
    if (i < 0 || i >= self->npeers) {
        PyErr_SetString(PyExc_IndexError, "peer index");
        return NULL;
    }
    CPeer *p = &self->peers[i];
    if (addr == Py_None) {
        p->has_addr = 0;
    } else {
        if (parse_addr(addr, self->v6, &p->addr, &p->alen) < 0) return NULL;
        p->has_addr = 1;
    }
    p->gso = gso;
    p->python = python;
    Py_RETURN_NONE;
}

/* set_routes(fixed, has_routes, [(net bytes, mask bytes, peer)] v4, same v6) */
static PyObject *Pump_set_routes(Pump *self, PyObject *args)
{
    REQUIRE_INIT(self);
    int fixed, has;
    PyObject *l4, *l6;
    if (!PyArg_ParseTuple(args, "ipO!O!", &fixed, &has, &PyList_Type, &l4, &PyList_Type, &l6)) return NULL;
    if (fixed >= self->npeers || PyList_GET_SIZE(l4) > MAX_ROUTES || PyList_GET_SIZE(l6) > MAX_ROUTES) {
        PyErr_SetString(PyExc_ValueError, "routes out of range");
        return NULL;
    }
    for (int v = 0; v < 2; v++) {
        PyObject *l = v ? l6 : l4;
        CRoute *rs = v ? self->r6 : self->r4;
        Py_ssize_t width = v ? 16 : 4;
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(l); i++) {
            const char *net, *mask;
            Py_ssize_t nl, ml;
            int peer;
            if (!PyArg_ParseTuple(PyList_GET_ITEM(l, i), "y#y#i", &net, &nl, &mask, &ml, &peer)) return NULL;
            if (nl != width || ml != width || peer < 0 || peer >= self->npeers) {
                PyErr_SetString(PyExc_ValueError, "bad route");
                return NULL;
            }
            memcpy(rs[i].net, net, (size_t)width);
            memcpy(rs[i].mask, mask, (size_t)width);
            rs[i].peer = peer;
        }
    }
    self->n4 = (int)PyList_GET_SIZE(l4);
    self->n6 = (int)PyList_GET_SIZE(l6);
    self->fixed = fixed;
    self->has_routes = has;
    Py_RETURN_NONE;
}

/* take() -> (counters tuple, drops dict (non-zero only), [(rxp, rxb, txp, txb)] per peer); zeroes them */
static PyObject *Pump_take(Pump *self, PyObject *unused)
{
    PyObject *cs = PyTuple_New(N_COUNTERS), *ds = PyDict_New(), *ps = PyList_New(self->npeers);
    if (!cs || !ds || !ps) goto fail;
    for (int i = 0; i < N_COUNTERS; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(self->c[i]);
        if (!v) goto fail;
        PyTuple_SET_ITEM(cs, i, v);
    }
    for (int i = 0; i < N_DROPS; i++) {
        if (!self->drops[i]) continue;
        PyObject *v = PyLong_FromUnsignedLongLong(self->drops[i]);
        if (!v || PyDict_SetItemString(ds, DROP_NAMES[i], v) < 0) { Py_XDECREF(v); goto fail; }
        Py_DECREF(v);
    }
    for (int i = 0; i < self->npeers; i++) {
        CPeer *p = &self->peers[i];
        PyObject *t = Py_BuildValue("(KKKK)", (unsigned long long)p->rxp, (unsigned long long)p->rxb,
                                    (unsigned long long)p->txp, (unsigned long long)p->txb);
        if (!t) goto fail;
        PyList_SET_ITEM(ps, i, t);
        p->rxp = p->rxb = p->txp = p->txb = 0;
    }
    memset(self->c, 0, sizeof(self->c));
    memset(self->drops, 0, sizeof(self->drops));
    return Py_BuildValue("(NNN)", cs, ds, ps);
fail:
    Py_XDECREF(cs);
    Py_XDECREF(ds);
    Py_XDECREF(ps);
    return NULL;
}

/* left() -> what the last loop left for Python: (n, seg or offset, peer, trunc, addr or None, errno) */
static PyObject *Pump_left(Pump *self, PyObject *unused)
{
    PyObject *addr;
    if (self->left_alen) {
        char host[INET6_ADDRSTRLEN] = "";
        int port = 0;
        if (self->left_addr.ss_family == AF_INET6) {
            struct sockaddr_in6 *s = (void *)&self->left_addr;
            inet_ntop(AF_INET6, &s->sin6_addr, host, sizeof(host));
            port = ntohs(s->sin6_port);
        } else {
            struct sockaddr_in *s = (void *)&self->left_addr;
            inet_ntop(AF_INET, &s->sin_addr, host, sizeof(host));
            port = ntohs(s->sin_port);
        }
        addr = Py_BuildValue("(si)", host, port);
    } else {
        addr = Py_NewRef(Py_None);
    }
    if (!addr) return NULL;
    return Py_BuildValue("(nnniNi)", self->left_n, self->left_seg, (Py_ssize_t)self->left_peer, self->left_trunc,
                         addr, self->left_errno);
}

/* the UDP GSO send of `len` bytes of back-to-back datagrams of `seg` bytes */
static ssize_t gso_send(int sock, const uint8_t *data, size_t len, uint16_t seg, CPeer *p)
{
    struct iovec iov = {(void *)data, len};
    union {
        char buf[CMSG_SPACE(sizeof(uint16_t))];
        struct cmsghdr align;
    } u;
    struct msghdr m;
    memset(&m, 0, sizeof(m));
    m.msg_name = &p->addr;
    m.msg_namelen = p->alen;
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = u.buf;
    m.msg_controllen = sizeof(u.buf);
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_UDP_;
    c->cmsg_type = UDP_SEGMENT_;
    c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
    memcpy(CMSG_DATA(c), &seg, sizeof(seg));
    return sendmsg(sock, &m, 0);
}

static int send_err(Pump *self, int count)
{
    if (errno == EAGAIN || errno == EWOULDBLOCK) self->drops[D_BACKLOG] += (uint64_t)count;
    else self->drops[D_SEND_ERROR] += (uint64_t)count;
    return 0;
}

/* device -> peers with offload on: readv straight into the chunk slots, stamp, one GSO send */
static int loop_tx_gso(Pump *self, int budget, uint32_t *pidp)
{
    uint8_t *buf = self->txbuf.buf;
    Py_ssize_t g = self->segment, cs = self->csize;
    int m = (int)self->max_count;
    struct iovec iov[MAX_COUNT];
    for (int i = 0; i < m; i++) {
        iov[i].iov_base = buf + (Py_ssize_t)i * g + HDR_LEN;
        iov[i].iov_len = (size_t)cs;
    }
    uint32_t pid = *pidp;
    const uint8_t *first = buf + HDR_LEN;
    int status = ST_MORE;
    for (int b = 0; b < budget; b++) {
        ssize_t n = readv(self->dev, iov, m);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) { status = ST_DRAINED; break; }
            if (errno == EINTR) continue;
            self->left_errno = errno;
            status = ST_DEV_ERROR;
            break;
        }
        Py_ssize_t plen = n - VNET_LEN;
        self->c[C_READS]++;
        self->c[C_DEV_RX_P]++;
        if (plen <= 0) { self->drops[D_SHORT_READ]++; continue; }
        self->c[C_DEV_RX_B] += (uint64_t)plen;
        int pi = route_lookup(self, first + VNET_LEN, plen);
        if (pi < 0) { self->drops[D_NO_ROUTE]++; continue; }
        CPeer *p = &self->peers[pi];
        if (!p->has_addr) { self->drops[D_PEER_DOWN]++; continue; }
        if (!p->gso || p->python) {  /* a read from before offload switched, or a Python link: Python sends it */
            self->left_n = n;
            self->left_peer = pi;
            status = p->python ? ST_PY : ST_LEFTOVER;
            break;
        }
        pid++;
        int count = (int)((n + cs - 1) / cs);
        if (count < 1) count = 1;
        stamp(buf, g, count, pid);
        size_t len = (size_t)n + (size_t)count * HDR_LEN;
        int ok = 1;
        if (count == 1) {
            if (sendto(self->sock, buf, len, 0, (struct sockaddr *)&p->addr, p->alen) < 0) ok = send_err(self, 1);
            else self->c[C_SENDS]++;
        } else if (count <= UDP_MAX_SEGS && len <= UDP_MAX_PAYLOAD) {
            if (gso_send(self->sock, buf, len, (uint16_t)g, p) < 0) ok = send_err(self, 1);
            else self->c[C_SENDS]++;
        } else {
            Py_ssize_t per = UDP_MAX_PAYLOAD / g;
            if (per > UDP_MAX_SEGS) per = UDP_MAX_SEGS;
            if (per < 1) per = 1;
            for (Py_ssize_t s = 0; s < count && ok; s += per) {
                size_t a = (size_t)(s * g), e = (size_t)((s + per) * g);
                if (e > len) e = len;
                if (gso_send(self->sock, buf + a, e - a, (uint16_t)g, p) < 0) ok = send_err(self, 1);
                else self->c[C_SENDS]++;
            }
        }
        if (!ok) continue;
        uint16_t gso_size = (uint16_t)(first[4] | first[5] << 8), hdr_len = (uint16_t)(first[2] | first[3] << 8);
        if ((first[1] & 0x7F) && gso_size) {
            Py_ssize_t segs = (plen - hdr_len + gso_size - 1) / gso_size;
            self->c[C_SEGMENTS] += segs > 0 ? (uint64_t)segs : 0;
        } else {
            self->c[C_SEGMENTS]++;
        }
        self->c[C_DATAGRAMS_TX] += (uint64_t)count;
        p->txp++;
        p->txb += (uint64_t)plen;
    }
    *pidp = pid;
    return status;
}

/* send a run of k plain packets (all blen bytes but the last) to peer pi from the plain slots */
static void plain_flush(Pump *self, int pi, int k, Py_ssize_t blen, Py_ssize_t last)
{
    if (k == 0 || pi < 0) return;
    CPeer *p = &self->peers[pi];
    if (!p->has_addr) { self->drops[D_PEER_DOWN] += (uint64_t)k; return; }
    uint8_t *view = self->pbuf.buf;
    Py_ssize_t stride = self->stride;
    ssize_t r;
    if (k == 1) {
        r = sendto(self->sock, view, (size_t)last, 0, (struct sockaddr *)&p->addr, p->alen);
    } else {
        struct iovec iov[UDP_MAX_SEGS];
        for (int i = 0; i < k; i++) {
            iov[i].iov_base = view + i * stride;
            iov[i].iov_len = (size_t)(i == k - 1 ? last : blen);
        }
        uint16_t seg = (uint16_t)blen;
        union {
            char buf[CMSG_SPACE(sizeof(uint16_t))];
            struct cmsghdr align;
        } u;
        struct msghdr m;
        memset(&m, 0, sizeof(m));
        m.msg_name = &p->addr;
        m.msg_namelen = p->alen;
        m.msg_iov = iov;
        m.msg_iovlen = (size_t)k;
        m.msg_control = u.buf;
        m.msg_controllen = sizeof(u.buf);
        struct cmsghdr *c = CMSG_FIRSTHDR(&m);
        c->cmsg_level = SOL_UDP_;
        c->cmsg_type = UDP_SEGMENT_;
        c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
        memcpy(CMSG_DATA(c), &seg, sizeof(seg));
        r = sendmsg(self->sock, &m, 0);
    }
    if (r < 0) { send_err(self, k); return; }
    self->c[C_SENDS]++;
    self->c[C_DATAGRAMS_TX] += (uint64_t)k;
    p->txp += (uint64_t)k;
    p->txb += (uint64_t)((k - 1) * blen + last);
}

/* device -> peers with offload off: one packet per read, runs of equal-size packets in one GSO send */
static int loop_tx_plain(Pump *self, int budget)
{
    uint8_t *view = self->pbuf.buf, *scratch = self->scratch.buf;
    Py_ssize_t stride = self->stride;
    int nslots = (int)self->nslots;
    int k = 0, bpeer = -1, status = ST_MORE;
    Py_ssize_t blen = 0, last = 0;
    for (int b = 0; b < budget; b++) {
        if (k && (k == nslots || last < blen)) {
            plain_flush(self, bpeer, k, blen, last);
            k = 0;
        }
        struct iovec iov[3] = {{scratch, VNET_LEN}, {view + k * stride, (size_t)stride},
                               {self->overflow.buf, (size_t)self->overflow.len}};
        ssize_t n = readv(self->dev, iov, 3);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) { status = ST_DRAINED; break; }
            if (errno == EINTR) continue;
            self->left_errno = errno;
            status = ST_DEV_ERROR;
            break;
        }
        Py_ssize_t plen = n - VNET_LEN;
        self->c[C_READS]++;
        if (plen <= 0) { self->drops[D_SHORT_READ]++; continue; }
        self->c[C_DEV_RX_P]++;
        self->c[C_DEV_RX_B] += (uint64_t)plen;
        Py_ssize_t off = k * stride;
        if (plen > stride || scratch[0] || scratch[1]) {  /* offload metadata: a read from before the switch */
            plain_flush(self, bpeer, k, blen, last);
            self->left_n = plen;
            self->left_seg = off;
            status = ST_LEFTOVER;
            break;
        }
        int pi = route_lookup(self, view + off, plen);
        if (pi < 0) { self->drops[D_NO_ROUTE]++; continue; }
        if (self->peers[pi].python) {
            plain_flush(self, bpeer, k, blen, last);
            self->left_n = plen;
            self->left_seg = off;
            self->left_peer = pi;
            status = ST_PY;
            break;
        }
        self->c[C_SEGMENTS]++;
        if (k && (pi != bpeer || plen > blen)) {
            plain_flush(self, bpeer, k, blen, last);
            memmove(view, view + off, (size_t)plen);
            k = 0;
        }
        if (k == 0) { bpeer = pi; blen = plen; }
        last = plen;
        k++;
    }
    if (status != ST_LEFTOVER && status != ST_PY && k) plain_flush(self, bpeer, k, blen, last);
    return status;
}

static ssize_t dev_writev(Pump *self, struct iovec *iov, int cnt)
{
    ssize_t r;
    do { r = writev(self->dev, iov, cnt); } while (r < 0 && errno == EINTR);
    return r;
}

/* the plain datagrams of a receive that are all IP packets: write them, merging TCP runs; returns 0 if
 * the receive holds something only Python handles (a chunk, a hello), before anything was written */
static int rx_plain_batch(Pump *self, CPeer *p, const uint8_t *buf, Py_ssize_t n, Py_ssize_t seg)
{
    Py_ssize_t k = (n + seg - 1) / seg;
    for (Py_ssize_t i = 0; i < k; i++) {
        const uint8_t *d = buf + i * seg;
        Py_ssize_t size = n - i * seg < seg ? n - i * seg : seg;
        if (size > 0 && (d[0] == MAGIC0 || (size == HELLO_LEN && d[9] == HELLO_PROTO))) return 0;
    }
    static const uint8_t zero[VNET_LEN] = {0};
    Py_ssize_t i = 0;
    while (i < k) {
        Py_ssize_t off = i * seg;
        const uint8_t *d = buf + off;
        Py_ssize_t size = n - off < seg ? n - off : seg;
        i++;
        self->c[C_DATAGRAMS_RX]++;
        int why = check_pkt(d, size, self->limit, self->tap);
        if (why >= 0) { self->drops[why]++; continue; }
        if (i < k && d[0] == 0x45) {
            int hl;
            Py_ssize_t most = k - i + 1 < MAX_IOV - 3 ? k - i + 1 : MAX_IOV - 3;  /* iovecs of one write */
            Py_ssize_t run = merge_run(buf, off, seg, most, n, &hl);
            if (run > 1) {
                Py_ssize_t last_off = off + (run - 1) * seg;
                Py_ssize_t last_end = n < last_off + seg ? n : last_off + seg;
                Py_ssize_t payload = (run - 1) * (seg - hl) + (last_end - last_off - hl);
                uint8_t vnet[VNET_LEN], hdr[128];
                super_header(d, hl, payload, seg - hl, (buf[last_off + 33] & TCP_PSH) != 0, vnet, hdr);
                struct iovec iov[MAX_IOV];
                int c = 0;
                iov[c++] = (struct iovec){vnet, VNET_LEN};
                iov[c++] = (struct iovec){hdr, (size_t)hl};
                for (Py_ssize_t o = off; o < last_off && c < MAX_IOV - 1; o += seg)
                    iov[c++] = (struct iovec){(void *)(buf + o + hl), (size_t)(seg - hl)};
                iov[c++] = (struct iovec){(void *)(buf + last_off + hl), (size_t)(last_end - last_off - hl)};
                i += run - 1;
                self->c[C_DATAGRAMS_RX] += (uint64_t)(run - 1);
                self->c[C_MERGED] += (uint64_t)run;
                p->rxp += (uint64_t)run;
                p->rxb += (uint64_t)(payload + run * hl);
                if (dev_writev(self, iov, c) < 0) { self->drops[D_DEV_WRITE_ERROR]++; continue; }
                self->c[C_DEV_TX_P]++;
                self->c[C_DEV_TX_B] += (uint64_t)(hl + payload);
                continue;
            }
        }
        p->rxp++;
        p->rxb += (uint64_t)size;
        struct iovec iov[2] = {{(void *)zero, VNET_LEN}, {(void *)d, (size_t)size}};
        if (dev_writev(self, iov, 2) < 0) { self->drops[D_DEV_WRITE_ERROR]++; continue; }
        self->c[C_DEV_TX_P]++;
        self->c[C_DEV_TX_B] += (uint64_t)size;
    }
    return 1;
}

/* peers -> device: one receive per GRO batch; whole streams and TCP runs in one write */
static int loop_rx(Pump *self, int budget)
{
    uint8_t *buf = self->rxbuf.buf;
    size_t cap = (size_t)self->rxbuf.len;
    int status = ST_MORE;
    for (int b = 0; b < budget; b++) {
        struct iovec iov = {buf, cap};
        union {
            char b[CMSG_SPACE(sizeof(int))];
            struct cmsghdr align;
        } u;
        struct msghdr m;
        memset(&m, 0, sizeof(m));
        m.msg_name = &self->left_addr;
        m.msg_namelen = sizeof(self->left_addr);
        m.msg_iov = &iov;
        m.msg_iovlen = 1;
        m.msg_control = u.b;
        m.msg_controllen = sizeof(u.b);
        ssize_t r = recvmsg(self->sock, &m, 0);
        if (r < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) { status = ST_DRAINED; break; }
            if (errno == EINTR) continue;
            self->drops[D_RECV_ERROR]++;
            status = ST_RECV_ERROR;
            break;
        }
        Py_ssize_t n = r, seg = 0;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
            if (c->cmsg_level == SOL_UDP_ && c->cmsg_type == UDP_GRO_ && c->cmsg_len >= CMSG_LEN(sizeof(int))) {
                int v;
                memcpy(&v, CMSG_DATA(c), sizeof(v));
                seg = v;
            }
        }
        int trunc = (m.msg_flags & MSG_TRUNC) != 0;
        int pi = peer_by_addr(self, &self->left_addr);
        if (pi < 0 || self->peers[pi].python) {  /* a new source (accept rules) or a Python link */
            self->left_n = n;  /* Python counts the receive it handles */
            self->left_seg = seg;
            self->left_trunc = trunc;
            self->left_alen = m.msg_namelen;
            self->left_peer = pi;
            status = ST_PY;
            break;
        }
        CPeer *p = &self->peers[pi];
        self->c[C_RECEIVES]++;
        if (trunc) { self->drops[D_TOO_BIG]++; continue; }
        if (n == 0) { self->drops[D_EMPTY]++; continue; }
        if (seg <= 0 || seg > n) seg = n;
        if (seg < n && buf[0] == 0x45) {
            int hl = (n + seg - 1) / seg + 2 <= MAX_IOV ? whole_batch(buf, n, seg) : 0;
            if (hl) {
                Py_ssize_t k = (n + seg - 1) / seg;
                Py_ssize_t payload = n - k * hl, last_off = (k - 1) * seg;
                uint8_t vnet[VNET_LEN], hdr[128];
                super_header(buf, hl, payload, seg - hl, (buf[last_off + 33] & TCP_PSH) != 0, vnet, hdr);
                struct iovec v[MAX_IOV];
                int c = 0;
                v[c++] = (struct iovec){vnet, VNET_LEN};
                v[c++] = (struct iovec){hdr, (size_t)hl};
                for (Py_ssize_t i = 0; i < k && c < MAX_IOV; i++) {
                    Py_ssize_t o = i * seg, e = o + seg < n ? o + seg : n;
                    v[c++] = (struct iovec){buf + o + hl, (size_t)(e - o - hl)};
                }
                self->c[C_DATAGRAMS_RX] += (uint64_t)k;
                self->c[C_MERGED] += (uint64_t)k;
                p->rxp += (uint64_t)k;
                p->rxb += (uint64_t)n;
                if (dev_writev(self, v, c) < 0) { self->drops[D_DEV_WRITE_ERROR]++; continue; }
                self->c[C_DEV_TX_P]++;
                self->c[C_DEV_TX_B] += (uint64_t)(hl + payload);
                continue;
            }
        } else if (buf[0] == MAGIC0) {
            int count = columns_ok(buf, n, seg);
            if (count) {
                Py_ssize_t plen = n - (Py_ssize_t)count * HDR_LEN - VNET_LEN;
                Py_ssize_t first_end = n < seg ? n : seg;
                Py_ssize_t avail = first_end - HDR_LEN - VNET_LEN;
                /* the inner packet is checked like a plain one (its first bytes are in the first chunk) */
                /* plen <= 0 is "empty" before a byte is read; else the first chunk holds at least one */
                int why = avail < 1 && plen > 0 ? D_TRUNCATED
                                                : check_pkt(buf + HDR_LEN + VNET_LEN, plen, MAX_STREAM, self->tap);
                if (why >= 0) { self->drops[why]++; continue; }
                if (plen > 0) {
                    struct iovec v[MAX_COUNT];
                    for (int i = 0; i < count; i++) {
                        Py_ssize_t o = (Py_ssize_t)i * seg, e = o + seg < n ? o + seg : n;
                        v[i] = (struct iovec){buf + o + HDR_LEN, (size_t)(e - o - HDR_LEN)};
                    }
                    self->c[C_DATAGRAMS_RX] += (uint64_t)count;
                    self->c[C_WHOLE]++;
                    p->rxp++;
                    p->rxb += (uint64_t)plen;
                    if (dev_writev(self, v, count) < 0) { self->drops[D_DEV_WRITE_ERROR]++; continue; }
                    self->c[C_DEV_TX_P]++;
                    self->c[C_DEV_TX_B] += (uint64_t)plen;
                    continue;
                }
            }
        }
        if (rx_plain_batch(self, p, buf, n, seg)) continue;
        /* chunks to reassemble, hellos: Python */
        self->c[C_RECEIVES]--;
        self->left_n = n;
        self->left_seg = seg;
        self->left_trunc = 0;
        self->left_alen = m.msg_namelen;
        self->left_peer = pi;
        status = ST_PY;
        break;
    }
    return status;
}

static PyObject *Pump_tx(Pump *self, PyObject *args)
{
    REQUIRE_INIT(self);
    int budget, gso;
    unsigned long pid_in;
    if (!PyArg_ParseTuple(args, "ipk", &budget, &gso, &pid_in)) return NULL;
    uint32_t pid = (uint32_t)pid_in;
    int st;
    self->left_errno = 0;
    self->left_alen = 0;
    self->left_peer = -1;
    Py_BEGIN_ALLOW_THREADS
    st = gso ? loop_tx_gso(self, budget, &pid) : loop_tx_plain(self, budget);
    Py_END_ALLOW_THREADS
    return Py_BuildValue("(ik)", st, (unsigned long)pid);
}

static PyObject *Pump_rx(Pump *self, PyObject *args)
{
    REQUIRE_INIT(self);
    int budget, st;
    if (!PyArg_ParseTuple(args, "i", &budget)) return NULL;
    self->left_errno = 0;
    self->left_alen = 0;
    self->left_peer = -1;
    Py_BEGIN_ALLOW_THREADS
    st = loop_rx(self, budget);
    Py_END_ALLOW_THREADS
    return PyLong_FromLong(st);
}

/* poll(epfd, timeout_ms, budget, gso, pid) -> (events, which, status, pid): waits on the relay loop's
 * epoll descriptor itself (the GIL released) and runs the device and socket loops for their events,
 * staying in C while only they are ready, so a packet costs no trip through the interpreter. Returns
 * the (fd, events) Python must handle: other descriptors (control socket, wake-up pipe, ...), and the
 * device (which 1) or the socket (which 2) when its loop stopped at something for Python (status).
 * Returns at once after a timeout or a signal (EINTR) with what it has, and, after it carried packets,
 * within FLUSH_IDLE_MS of going idle or FLUSH_BUSY_MS of carrying, so that Python folds the counters
 * in (another thread reading Relay.counters() sees them late by at most that). */
#define FLUSH_IDLE_MS 10
#define FLUSH_BUSY_MS 50

static long long now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static PyObject *Pump_poll(Pump *self, PyObject *args)
{
    REQUIRE_INIT(self);
    int epfd, timeout, budget, gso;
    unsigned long pid_in;
    if (!PyArg_ParseTuple(args, "iiipk", &epfd, &timeout, &budget, &gso, &pid_in)) return NULL;
    uint32_t pid = (uint32_t)pid_in;
    struct epoll_event evs[32];
    int out_fd[32];
    uint32_t out_ev[32];
    int nout = 0, which = 0, status = 0, err = 0, dirty = 0;
    self->left_errno = 0;
    self->left_alen = 0;
    self->left_peer = -1;
    Py_BEGIN_ALLOW_THREADS
    long long t0 = now_ms();
    for (;;) {
        int wait = timeout;
        if (dirty && (wait < 0 || wait > FLUSH_IDLE_MS)) wait = FLUSH_IDLE_MS;
        int n = epoll_wait(epfd, evs, 32, wait);
        if (n < 0) { err = errno; break; }
        if (n == 0) break;
        for (int i = 0; i < n && !which; i++) {
            int fd = evs[i].data.fd;
            uint32_t ev = evs[i].events;
            if (fd == self->dev && fd >= 0 && !(ev & (EPOLLERR | EPOLLHUP))) {
                dirty = 1;
                int st = gso ? loop_tx_gso(self, budget, &pid) : loop_tx_plain(self, budget);
                if (st == ST_PY || st == ST_LEFTOVER || st == ST_DEV_ERROR) {
                    which = 1;
                    status = st;
                    out_fd[nout] = fd;
                    out_ev[nout++] = ev;
                }
            } else if (fd == self->sock && fd >= 0 && !(ev & (EPOLLERR | EPOLLHUP))) {
                dirty = 1;
                int st = loop_rx(self, budget);
                if (st == ST_PY) {
                    which = 2;
                    status = st;
                    out_fd[nout] = fd;
                    out_ev[nout++] = ev;
                }
            } else {
                out_fd[nout] = fd;
                out_ev[nout++] = ev;
            }
        }
        if (nout || timeout >= 0 || (dirty && now_ms() - t0 >= FLUSH_BUSY_MS)) break;
    }
    Py_END_ALLOW_THREADS
    if (err && err != EINTR) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *list = PyList_New(nout);
    if (!list) return NULL;
    for (int i = 0; i < nout; i++) {
        PyObject *t = Py_BuildValue("(iI)", out_fd[i], (unsigned int)out_ev[i]);
        if (!t) { Py_DECREF(list); return NULL; }
        PyList_SET_ITEM(list, i, t);
    }
    return Py_BuildValue("(Niik)", list, which, status, (unsigned long)pid);
}

/* ------------------------------------------------------------------------------------------------ */
/* TCP framing (2-byte big-endian length + packet)                                                   */

/* tcp_read(buf, off, budget, peer) -> (status, off, peer, packets, bytes, reads, read_bytes, pending, next):
 * frames device packets in place from `off` on while they go to one peer (`peer`: the one the frames
 * before `off` go to, -1 when there are none); a packet for another peer is
 * left unframed at off + 2 (its length in `pending`, its peer `next`) and the loop ends (status PY; LEFTOVER
 * when that peer's link is Python's). Counts only drops. */
static PyObject *Pump_tcp_read(Pump *self, PyObject *args)
{
    REQUIRE_INIT(self);
    Py_buffer b;
    Py_ssize_t off;
    int budget, cur, next = -1, err = 0, status = ST_MORE;
    if (!PyArg_ParseTuple(args, "w*nii", &b, &off, &budget, &cur)) return NULL;
    uint8_t *buf = b.buf;
    Py_ssize_t size = b.len, room = 2 + 65536;
    Py_ssize_t packets = 0, bytes = 0, reads = 0, rbytes = 0, pending = 0;
    if (off < 0 || off > size || cur < -1 || cur >= self->npeers || (off > 0 && cur < 0)) {
        PyBuffer_Release(&b);
        PyErr_SetString(PyExc_ValueError, "offset out of range");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    for (int i = 0; i < budget; i++) {
        if (size - off < room) { status = ST_MORE; break; }
        ssize_t n = read(self->dev, buf + off + 2, (size_t)(size - off - 2 < 65535 ? size - off - 2 : 65535));
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) { status = ST_DRAINED; break; }
            if (errno == EINTR) continue;
            err = errno;
            status = ST_DEV_ERROR;
            break;
        }
        reads++;
        rbytes += n;
        if (n == 0) { self->drops[D_SHORT_READ]++; continue; }  /* never frame a length of 0 */
        int pi = route_lookup(self, buf + off + 2, n);
        if (pi < 0) { self->drops[D_NO_ROUTE]++; continue; }
        if (self->peers[pi].python) { pending = n; next = pi; status = ST_LEFTOVER; break; }  /* a Python link */
        if (cur >= 0 && pi != cur) { pending = n; next = pi; status = ST_PY; break; }
        cur = pi;
        buf[off] = (uint8_t)(n >> 8);
        buf[off + 1] = (uint8_t)n;
        off += n + 2;
        packets++;
        bytes += n;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&b);
    if (status == ST_DEV_ERROR) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    /* on ST_PY a packet for peer `next` waits unframed at off + 2 (`pending` bytes) */
    return Py_BuildValue("(inin nnnni)", status, off, cur, packets, bytes, reads, rbytes, pending, next);
}

/* deframe(buf, start, end, max_len, limit, tap, fd) -> (start, error, frames, bytes, written, wbytes,
 * drops, out): the whole frames in buf[start:end] are checked like packets and written to `fd` (or, with
 * fd -1, returned in the list `out`); a bad length (0 or above max_len) sets error and stops. */
static PyObject *deframe(PyObject *mod, PyObject *args)
{
    Py_buffer b;
    Py_ssize_t start, end, max_len, limit;
    int tap, fd;
    if (!PyArg_ParseTuple(args, "y*nnnnpi", &b, &start, &end, &max_len, &limit, &tap, &fd)) return NULL;
    if (start < 0 || end > b.len || start > end || max_len <= 0 || max_len > 0xFFFF) {
        PyBuffer_Release(&b);
        PyErr_SetString(PyExc_ValueError, "deframe: range out of bounds");
        return NULL;
    }
    const uint8_t *buf = b.buf;
    PyObject *out = fd < 0 ? PyList_New(0) : Py_NewRef(Py_None);
    uint64_t drops[N_DROPS] = {0};
    Py_ssize_t frames = 0, fbytes = 0, written = 0, wbytes = 0;
    int error = 0;
    if (!out) { PyBuffer_Release(&b); return NULL; }
    while (end - start >= 2) {
        Py_ssize_t len = be16(buf + start);
        if (len == 0 || len > max_len) { error = 1; break; }
        if (start + 2 + len > end) break;
        const uint8_t *pkt = buf + start + 2;
        start += 2 + len;
        int why = check_pkt(pkt, len, limit, tap);
        if (why >= 0) { drops[why]++; continue; }
        frames++;
        fbytes += len;
        if (fd < 0) {
            PyObject *f = PyBytes_FromStringAndSize((const char *)pkt, len);
            if (!f || PyList_Append(out, f) < 0) { Py_XDECREF(f); Py_DECREF(out); PyBuffer_Release(&b); return NULL; }
            Py_DECREF(f);
            continue;
        }
        ssize_t r;
        Py_BEGIN_ALLOW_THREADS
        do { r = write(fd, pkt, (size_t)len); } while (r < 0 && errno == EINTR);
        Py_END_ALLOW_THREADS
        if (r < 0) { drops[D_DEV_WRITE_ERROR]++; continue; }
        written++;
        wbytes += len;
    }
    PyBuffer_Release(&b);
    PyObject *ds = PyDict_New();
    if (!ds) { Py_DECREF(out); return NULL; }
    for (int i = 0; i < N_DROPS; i++) {
        if (!drops[i]) continue;
        PyObject *v = PyLong_FromUnsignedLongLong(drops[i]);
        if (!v || PyDict_SetItemString(ds, DROP_NAMES[i], v) < 0) { Py_XDECREF(v); Py_DECREF(ds); Py_DECREF(out); return NULL; }
        Py_DECREF(v);
    }
    return Py_BuildValue("(nOnnnnNN)", start, error ? Py_True : Py_False, frames, fbytes, written, wbytes, ds, out);
}

/* ------------------------------------------------------------------------------------------------ */
/* the pure helpers, exposed for differential tests and fuzzing                                       */

static PyObject *py_columns_ok(PyObject *mod, PyObject *args)
{
    Py_buffer b;
    Py_ssize_t end, seg;
    if (!PyArg_ParseTuple(args, "y*nn", &b, &end, &seg)) return NULL;
    int r = (end < 0 || end > b.len) ? 0 : columns_ok(b.buf, end, seg);
    PyBuffer_Release(&b);
    return PyLong_FromLong(r);
}

static PyObject *py_whole_batch(PyObject *mod, PyObject *args)
{
    Py_buffer b;
    Py_ssize_t end, stride;
    if (!PyArg_ParseTuple(args, "y*nn", &b, &end, &stride)) return NULL;
    int r = (end < 0 || end > b.len || stride < 40) ? 0 : whole_batch(b.buf, end, stride);
    PyBuffer_Release(&b);
    return PyLong_FromLong(r);
}

static PyObject *py_merge_run(PyObject *mod, PyObject *args)
{
    Py_buffer b;
    Py_ssize_t start, stride, count, end;
    if (!PyArg_ParseTuple(args, "y*nnnn", &b, &start, &stride, &count, &end)) return NULL;
    if (start < 0 || end > b.len || start >= end || stride <= 0) {
        PyBuffer_Release(&b);
        PyErr_SetString(PyExc_ValueError, "merge_run: range out of bounds");
        return NULL;
    }
    int hl;
    Py_ssize_t n = merge_run(b.buf, start, stride, count, end, &hl);
    PyBuffer_Release(&b);
    return Py_BuildValue("(ni)", n, hl);
}

static PyObject *py_super_header(PyObject *mod, PyObject *args)
{
    Py_buffer b;
    Py_ssize_t start, payload, mss;
    int hl, psh;
    if (!PyArg_ParseTuple(args, "y*ninnp", &b, &start, &hl, &payload, &mss, &psh)) return NULL;
    if (hl < 40 || hl > 80 || start < 0 || start + hl > b.len) {
        PyBuffer_Release(&b);
        PyErr_SetString(PyExc_ValueError, "super_header: range out of bounds");
        return NULL;
    }
    uint8_t vnet[VNET_LEN], hdr[128];
    super_header((const uint8_t *)b.buf + start, hl, payload, mss, psh, vnet, hdr);
    PyBuffer_Release(&b);
    return Py_BuildValue("(y#y#)", vnet, (Py_ssize_t)VNET_LEN, hdr, (Py_ssize_t)hl);
}

static PyObject *py_check(PyObject *mod, PyObject *args)
{
    Py_buffer b;
    Py_ssize_t n, limit;
    int tap;
    if (!PyArg_ParseTuple(args, "y*nnp", &b, &n, &limit, &tap)) return NULL;
    if (n > b.len) n = b.len;
    int why = check_pkt(b.buf, n, limit, tap);
    PyBuffer_Release(&b);
    if (why < 0) Py_RETURN_NONE;
    return PyUnicode_FromString(DROP_NAMES[why]);
}

/* chunk_stream(stream, queue, pid, csize) -> list of chunk datagrams, laid out and stamped as tx_gso does */
static PyObject *py_chunk_stream(PyObject *mod, PyObject *args)
{
    Py_buffer b;
    int queue;
    unsigned long pid;
    Py_ssize_t csize;
    if (!PyArg_ParseTuple(args, "y*ikn", &b, &queue, &pid, &csize)) return NULL;
    Py_ssize_t n = b.len;
    if (n <= 0 || n > MAX_STREAM || csize < MIN_CSIZE || csize > 65535 - HDR_LEN || (n + csize - 1) / csize > MAX_COUNT) {
        PyBuffer_Release(&b);
        PyErr_SetString(PyExc_ValueError, "chunk_stream: length or chunk size out of range");
        return NULL;
    }
    int count = (int)((n + csize - 1) / csize);
    Py_ssize_t g = csize + HDR_LEN;
    uint8_t *lay = PyMem_Malloc((size_t)(count * g));
    if (!lay) { PyBuffer_Release(&b); return PyErr_NoMemory(); }
    for (int i = 0; i < count; i++) {
        uint8_t *h = lay + i * g;
        h[0] = MAGIC0; h[1] = MAGIC1; h[2] = VER_TYPE; h[3] = (uint8_t)queue; h[8] = (uint8_t)i;
        h[10] = (uint8_t)(csize >> 8); h[11] = (uint8_t)csize;
        Py_ssize_t a = i * csize, e = a + csize < n ? a + csize : n;
        memcpy(h + HDR_LEN, (const uint8_t *)b.buf + a, (size_t)(e - a));
    }
    stamp(lay, g, count, (uint32_t)pid);
    PyObject *out = PyList_New(count);
    for (int i = 0; out && i < count; i++) {
        Py_ssize_t len = (i == count - 1) ? n - (Py_ssize_t)i * csize + HDR_LEN : g;
        PyObject *d = PyBytes_FromStringAndSize((const char *)lay + i * g, len);
        if (!d) { Py_CLEAR(out); break; }
        PyList_SET_ITEM(out, i, d);
    }
    PyMem_Free(lay);
    PyBuffer_Release(&b);
    return out;
}

static PyMethodDef Pump_methods[] = {
    {"set_peer", (PyCFunction)Pump_set_peer, METH_VARARGS, "set_peer(index, addr | None, gso, python)"},
    {"set_routes", (PyCFunction)Pump_set_routes, METH_VARARGS, "set_routes(fixed, has_routes, v4, v6)"},
    {"take", (PyCFunction)Pump_take, METH_NOARGS, "counters since the last take(), then zeroed"},
    {"left", (PyCFunction)Pump_left, METH_NOARGS, "what the last loop left for Python"},
    {"tx", (PyCFunction)Pump_tx, METH_VARARGS, "tx(budget, gso, pid) -> (status, pid)"},
    {"rx", (PyCFunction)Pump_rx, METH_VARARGS, "rx(budget) -> status"},
    {"poll", (PyCFunction)Pump_poll, METH_VARARGS, "poll(epfd, timeout_ms, budget, gso, pid) -> (events, which, status, pid)"},
    {"tcp_read", (PyCFunction)Pump_tcp_read, METH_VARARGS, "tcp_read(buf, off, budget, peer): frame device packets in place"},
    {NULL},
};

static PyTypeObject PumpType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tunlab.relay.fast._cfast.Pump",
    .tp_basicsize = sizeof(Pump),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Pump_init,
    .tp_dealloc = (destructor)Pump_dealloc,
    .tp_methods = Pump_methods,
    .tp_doc = "The compiled loops of one relay's fast datapath.",
};

static PyMethodDef module_methods[] = {
    {"deframe", deframe, METH_VARARGS, "TCP frames out of a buffer (to a descriptor or a list)"},
    {"columns_ok", py_columns_ok, METH_VARARGS, "encap.gro_columns_ok"},
    {"whole_batch", py_whole_batch, METH_VARARGS, "gro.whole_batch"},
    {"merge_run", py_merge_run, METH_VARARGS, "gro.merge_run"},
    {"super_header", py_super_header, METH_VARARGS, "gro.super_header"},
    {"check", py_check, METH_VARARGS, "framing.check_l3 / check_l2"},
    {"chunk_stream", py_chunk_stream, METH_VARARGS, "encap.split_stream, as the send loop lays it out"},
    {NULL},
};

static struct PyModuleDef moduledef = {PyModuleDef_HEAD_INIT, "_cfast", "compiled fast datapath loops", -1,
                                       module_methods};

PyMODINIT_FUNC PyInit__cfast(void)
{
    if (PyType_Ready(&PumpType) < 0) return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
    Py_INCREF(&PumpType);
    if (PyModule_AddObject(m, "Pump", (PyObject *)&PumpType) < 0) { Py_DECREF(&PumpType); Py_DECREF(m); return NULL; }
    PyObject *d = PyTuple_New(N_DROPS), *c = PyTuple_New(N_COUNTERS);
    if (!d || !c) return NULL;
    for (int i = 0; i < N_DROPS; i++) PyTuple_SET_ITEM(d, i, PyUnicode_FromString(DROP_NAMES[i]));
    for (int i = 0; i < N_COUNTERS; i++) PyTuple_SET_ITEM(c, i, PyUnicode_FromString(COUNTER_NAMES[i]));
    PyModule_AddObject(m, "DROP_NAMES", d);
    PyModule_AddObject(m, "COUNTER_NAMES", c);
    PyModule_AddIntConstant(m, "MAX_PEERS", MAX_PEERS);
    PyModule_AddIntConstant(m, "MAX_ROUTES", MAX_ROUTES);
    PyModule_AddIntConstant(m, "DRAINED", ST_DRAINED);
    PyModule_AddIntConstant(m, "MORE", ST_MORE);
    PyModule_AddIntConstant(m, "PY", ST_PY);
    PyModule_AddIntConstant(m, "LEFTOVER", ST_LEFTOVER);
    PyModule_AddIntConstant(m, "DEV_ERROR", ST_DEV_ERROR);
    PyModule_AddIntConstant(m, "RECV_ERROR", ST_RECV_ERROR);
    return m;
}
