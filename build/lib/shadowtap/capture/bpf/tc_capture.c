// shadowtap's TC (clsact) capture classifier, compiled by bcc at run time (capture/ebpf.py).
//
// Attached on an interface's ingress and egress, it passes to user space every TCP packet whose
// source or destination port is in `ports` (all TCP when `config[0]` is 1), whole (up to
// MAX_CAPLEN bytes), with a monotonic timestamp. It never changes a packet's fate: it always
// returns TC_ACT_UNSPEC, so the next filter (or the default action) decides as if it were absent.
//
// Macros set by the loader:
//   L2_LEN         bytes before the IP header: 14 on Ethernet and loopback, 0 on raw-IP devices
//   SKIP_INGRESS   1 on loopback, where each packet passes egress then ingress: record it once
//   USE_RINGBUF    1: BPF ring buffer (one ordered buffer shared by all CPUs); 0: perf buffer
//   RINGBUF_PAGES  ring buffer size in pages (a power of two)
//   WAKEUP_EVERY   0: the kernel's adaptive notification (the reader is woken as soon as a record
//                  follows an empty ring: per packet at low rates; the live mirror's setting);
//                  N: records are submitted without a wake-up, and every N-th record on a CPU
//                  forces one. The reader then polls with a short timeout (capture/ebpf.py's
//                  BATCH_POLL_MS), so it wakes ~50 times a second instead of once a packet.
//
// Costs: a packet that does not match costs two small header loads and one hash lookup. A matching
// packet costs one copy of its bytes into the ring (ring buffer) or the perf sample (perf buffer).
// Every packet that matched but could not be handed over is counted in `counters[C_LOST]`, so
// losses are never silent.

#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/pkt_cls.h>

#define C_MATCHED 0    // packets that matched the port filter
#define C_LOST 1       // matched but dropped: ring/perf buffer full or copy failed
#define C_TRUNCATED 2  // handed over cut at MAX_CAPLEN
#define C_BYTES 3      // bytes of the matched packets (skb->len)
#define C_COUNT 4

struct rec_hdr {
    u64 ts_ns;   // bpf_ktime_get_ns(): CLOCK_MONOTONIC
    u32 len;     // the packet's length on the wire (skb->len)
    u32 caplen;  // bytes that follow this header
};

BPF_HASH(ports, u16, u8, 1024);           // watched TCP ports, host byte order
BPF_ARRAY(config, u32, 1);                // [0]: 1 = every TCP port
BPF_PERCPU_ARRAY(counters, u64, C_COUNT);

static __always_inline void count(u32 idx, u64 n) {
    u64 *v = counters.lookup(&idx);
    if (v)
        *v += n;
}

#if USE_RINGBUF
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);

#if WAKEUP_EVERY
BPF_PERCPU_ARRAY(unwoken, u32, 1);  // records submitted on this CPU since it last woke the reader

static __always_inline u64 wake_flags(void) {
    u32 zero = 0;
    u32 *n = unwoken.lookup(&zero);
    if (!n)
        return 0;
    if (++*n < WAKEUP_EVERY)
        return BPF_RB_NO_WAKEUP;
    *n = 0;
    return BPF_RB_FORCE_WAKEUP;
}
#else
static __always_inline u64 wake_flags(void) {
    return 0;
}
#endif

// A ring record's size must be a constant, so packets go into the smallest of a few record sizes
// that holds them: ACKs and small requests take 256 bytes of ring, not 64 KiB. (bcc does not allow
// map calls inside macros, hence one function a size.)
//
// The largest size is the pcap backend's snap length: above any TSO/GSO super-packet (64 KiB of IP
// payload, 65550-byte frames on loopback's 65536 MTU) short of BIG TCP.
#define XL_CAPLEN (65536 + 1024)
#define MAX_CAPLEN 262144
struct rec_s { struct rec_hdr h; u8 data[256]; };
struct rec_m { struct rec_hdr h; u8 data[2048]; };
struct rec_l { struct rec_hdr h; u8 data[16384]; };
struct rec_xl { struct rec_hdr h; u8 data[XL_CAPLEN]; };
struct rec_xxl { struct rec_hdr h; u8 data[MAX_CAPLEN]; };

// Fills a reserved record; returns 0, or -1 when the copy failed (the caller discards it).
static __always_inline int fill(struct __sk_buff *skb, struct rec_hdr *h, u8 *data, u32 size,
                                u64 ts, u32 len) {
    h->ts_ns = ts;
    h->len = skb->len;
    h->caplen = len;
    // The verifier needs 1 <= length <= size on the very register passed to the helper: bound
    // len - 1 (the barrier keeps clang from folding the check into a copy of the register).
    u64 last = (u64)len - 1;
    asm volatile("" : "+r"(last));
    if (last >= size)
        return -1;
    return bpf_skb_load_bytes(skb, 0, data, last + 1) < 0 ? -1 : 0;
}

static __always_inline void emit_s(struct __sk_buff *skb, u64 ts, u32 len) {
    struct rec_s *r = events.ringbuf_reserve(sizeof(*r));
    if (!r) { count(C_LOST, 1); return; }
    if (fill(skb, &r->h, r->data, sizeof(r->data), ts, len) < 0) {
        events.ringbuf_discard(r, 0); count(C_LOST, 1); return;
    }
    events.ringbuf_submit(r, wake_flags());
}

static __always_inline void emit_m(struct __sk_buff *skb, u64 ts, u32 len) {
    struct rec_m *r = events.ringbuf_reserve(sizeof(*r));
    if (!r) { count(C_LOST, 1); return; }
    if (fill(skb, &r->h, r->data, sizeof(r->data), ts, len) < 0) {
        events.ringbuf_discard(r, 0); count(C_LOST, 1); return;
    }
    events.ringbuf_submit(r, wake_flags());
}

static __always_inline void emit_l(struct __sk_buff *skb, u64 ts, u32 len) {
    struct rec_l *r = events.ringbuf_reserve(sizeof(*r));
    if (!r) { count(C_LOST, 1); return; }
    if (fill(skb, &r->h, r->data, sizeof(r->data), ts, len) < 0) {
        events.ringbuf_discard(r, 0); count(C_LOST, 1); return;
    }
    events.ringbuf_submit(r, wake_flags());
}

static __always_inline void emit_xl(struct __sk_buff *skb, u64 ts, u32 len) {
    struct rec_xl *r = events.ringbuf_reserve(sizeof(*r));
    if (!r) { count(C_LOST, 1); return; }
    if (fill(skb, &r->h, r->data, sizeof(r->data), ts, len) < 0) {
        events.ringbuf_discard(r, 0); count(C_LOST, 1); return;
    }
    events.ringbuf_submit(r, wake_flags());
}

static __always_inline void emit_xxl(struct __sk_buff *skb, u64 ts, u32 len) {
    struct rec_xxl *r = events.ringbuf_reserve(sizeof(*r));
    if (!r) { count(C_LOST, 1); return; }
    if (fill(skb, &r->h, r->data, sizeof(r->data), ts, len) < 0) {
        events.ringbuf_discard(r, 0); count(C_LOST, 1); return;
    }
    events.ringbuf_submit(r, wake_flags());
}

static __always_inline void emit(struct __sk_buff *skb, u64 ts) {
    u32 len = skb->len;
    if (len > MAX_CAPLEN) {
        len = MAX_CAPLEN;
        count(C_TRUNCATED, 1);
    }
    if (len <= 256)
        emit_s(skb, ts, len);
    else if (len <= 2048)
        emit_m(skb, ts, len);
    else if (len <= 16384)
        emit_l(skb, ts, len);
    else if (len <= XL_CAPLEN)
        emit_xl(skb, ts, len);
    else
        emit_xxl(skb, ts, len);
}

#else
BPF_PERF_OUTPUT(events);

// A perf sample's size is a u16: packets longer than this are cut (and counted).
#define MAX_CAPLEN (65535 - 64)

static __always_inline void emit(struct __sk_buff *skb, u64 ts) {
    struct rec_hdr h = {};
    u32 len = skb->len;
    h.ts_ns = ts;
    h.len = len;
    if (len > MAX_CAPLEN) {
        len = MAX_CAPLEN;
        count(C_TRUNCATED, 1);
    }
    h.caplen = len;
    int err = events.perf_submit_skb(skb, len, &h, sizeof(h));
    if (err < 0)
        count(C_LOST, 1);
}
#endif

static __always_inline int watched(u16 sport, u16 dport) {
    u32 zero = 0;
    u32 *all = config.lookup(&zero);
    if (all && *all)
        return 1;
    return ports.lookup(&sport) != NULL || ports.lookup(&dport) != NULL;
}

static __always_inline int capture(struct __sk_buff *skb) {
    u64 ts = bpf_ktime_get_ns();
    u32 l4 = 0;
    if (skb->protocol == htons(ETH_P_IP)) {
        struct iphdr ip;
        if (bpf_skb_load_bytes(skb, L2_LEN, &ip, sizeof(ip)) < 0)
            return TC_ACT_UNSPEC;
        if (ip.protocol != IPPROTO_TCP || (ip.frag_off & htons(0x1fff)))
            return TC_ACT_UNSPEC;  // not TCP, or a later fragment (no ports in it)
        l4 = L2_LEN + ip.ihl * 4;
    } else if (skb->protocol == htons(ETH_P_IPV6)) {
        struct ipv6hdr ip6;
        if (bpf_skb_load_bytes(skb, L2_LEN, &ip6, sizeof(ip6)) < 0)
            return TC_ACT_UNSPEC;
        if (ip6.nexthdr != IPPROTO_TCP)
            return TC_ACT_UNSPEC;  // extension headers before TCP are not followed
        l4 = L2_LEN + sizeof(ip6);
    } else {
        return TC_ACT_UNSPEC;
    }
    __be16 pp[2];
    if (bpf_skb_load_bytes(skb, l4, pp, sizeof(pp)) < 0)
        return TC_ACT_UNSPEC;
    if (!watched(ntohs(pp[0]), ntohs(pp[1])))
        return TC_ACT_UNSPEC;
    count(C_MATCHED, 1);
    count(C_BYTES, skb->len);
    emit(skb, ts);
    return TC_ACT_UNSPEC;
}

// `tc filter show` prints these program names after the filter's own name (shadowtap-<pid>-<start>,
// by which capture/tc.py recognises its filters and those a killed run left behind).
int shadowtap_egr(struct __sk_buff *skb) {
    return capture(skb);
}

int shadowtap_ing(struct __sk_buff *skb) {
#if SKIP_INGRESS
    return TC_ACT_UNSPEC;
#else
    return capture(skb);
#endif
}
