// shadowtap's TLS plaintext source, compiled by bcc at run time (capture/tls.py).
//
// uprobes on a TLS library's read and write functions (OpenSSL 1.1 and 3: SSL_read, SSL_write,
// SSL_read_ex, SSL_write_ex) hand the plaintext of each call to user space; tracepoints (this
// kernel has no kprobes) tie the SSL object to its TCP socket and the socket to its 4-tuple:
//
//   uprobe SSL_*(ssl, buf, num[, &len])   remembers the call per thread (`tasks`)
//   syscalls:sys_enter_read/write/recvfrom/sendto
//                                         inside such a call: the fd the thread uses (nested-syscall
//                                         method), remembered per SSL object (`ssl_conns`), because a
//                                         later read may be served from the library's buffer with no
//                                         syscall at all
//   sock:sock_recv_length/sock_send_length
//                                         inside such a call: the struct sock behind that fd (same)
//   sock:inet_sock_set_state              the socket's 4-tuple and role when it becomes ESTABLISHED
//                                         (SYN_SENT -> active/client, SYN_RECV -> passive/server);
//                                         its ends (FIN_WAIT1: this side closed, CLOSE_WAIT: the
//                                         peer closed, CLOSE: gone)
//   uretprobe SSL_*                       the call's result: bytes = the return value (SSL_read,
//                                         SSL_write) or, when it returns 1, *len (the _ex variants);
//                                         a return <= 0 transferred nothing (the buffer holds stale
//                                         bytes: never read). Reads the buffer after the call, so a
//                                         read's bytes are there and a partial write is cut right.
//   uprobe SSL_do_handshake (+ return)    a call in which the handshake's syscalls map ssl -> socket
//   uprobe SSL_free                       forgets the SSL object (its address will be reused)
//
// The port filter runs here: a socket's watch state is decided once (at ESTABLISHED from the ports
// and the side, or by user space for a socket that was open before the capture started: state
// PENDING until then), and calls on an IGNORED socket cost one hash lookup and no copy.
//
// Records (struct rec_hdr + bytes) go through a BPF ring buffer (one buffer, reservation order) or
// a perf buffer where the kernel lacks it (per CPU; user space reorders by time). A call's bytes
// go out in pieces of at most PIECE bytes, so a 20 KB (or 500 KB) SSL_write is never cut at a fixed
// 4 KB copy: up to MAX_PIECES pieces a call (MAX_PIECES * PIECE bytes, 512 KiB by default; beyond
// that the rest is counted in C_TRUNCATED and user space sees a gap). The verifier walks the loop
// once per iteration and gives up near 48 pieces; tail calls would lift the bound. Every record that could not be handed over
// is counted (C_LOST, C_LOST_BYTES); each piece carries the stream offset of its first byte, so
// user space places every byte where it belongs and a lost piece is a gap, not a shifted stream.
//
// Macros set by the loader:
//   USE_RINGBUF    1: BPF ring buffer; 0: perf buffer
//   RINGBUF_PAGES  ring buffer size in pages (a power of two)
//   WAKEUP_EVERY   0: wake the reader per record (the live mirror); N: submit without a wake-up
//                  and force one every N records a CPU (the reader polls on a timer,
//                  capture/tls.py BATCH_POLL_MS)
//   MAX_PIECES     pieces a call may take (see above)
//   PIECE          the bytes of a call a record carries at most (capture/tls.py PIECE: 16384)
//   USE_TASK_STORAGE 1: the per-thread state in task-local storage; 0: in a pid_tgid hash
//
// Costs: the four syscall tracepoints fire for every read/write/recvfrom/sendto on the host and
// cost one look at the thread's state (`tasks`) when the thread is not inside an SSL call. A TLS call costs one breakpoint trap at the probe site, the return through the
// uretprobe trampoline (a syscall on x86-64 since Linux 6.11) and one copy of its bytes into the
// ring (two on the perf path: into a per-CPU scratch, then the sample). The trap is cheap (~0.5 us
// on the project's VM) where the kernel emulates the instruction under it, and ~17 us there where
// it single-steps it: capture/tls_libs.py places the probes (SSL_read/SSL_read_ex on their common
// callee, whose first instruction is a push), so the _ex entry programs also take plain calls.

#include <uapi/linux/ptrace.h>
#include <uapi/linux/in.h>

#define K_DATA 1        // plaintext bytes of one SSL call (one piece)
#define K_OPEN 2        // a watched socket became ESTABLISHED
#define K_END_LOCAL 3   // this side sent its FIN (FIN_WAIT1)
#define K_END_REMOTE 4  // the peer sent its FIN (CLOSE_WAIT)
#define K_CLOSE 5       // the socket is gone (CLOSE)

#define D_READ 0   // the process read these bytes (received from its peer)
#define D_WRITE 1  // the process wrote them (sent to its peer)

#define F_TUPLE 1     // the record carries the socket's 4-tuple
#define F_FAULT 2     // the buffer could not be read: len is 0, the piece's bytes are a gap
#define F_NOSK 4      // no socket is known for this SSL object yet (no syscall seen in a call)

#define ROLE_UNKNOWN 0
#define ROLE_ACTIVE 1   // connected out: the process is the client
#define ROLE_PASSIVE 2  // accepted: the process is the server

#define W_PENDING 0   // not decided: user space resolves the 4-tuple from the fd and decides
#define W_WATCHED 1
#define W_IGNORED 2

#define SIDE_SERVER 0  // record the connections whose local port is watched (accepted ones)
#define SIDE_CLIENT 1  // ...whose remote port is watched (outgoing ones)
#define SIDE_BOTH 2

#define CALL_READ 0
#define CALL_WRITE 1
#define CALL_HANDSHAKE 2

#define C_CALLS 0        // SSL calls with data on a watched (or pending) socket
#define C_BYTES 1        // their bytes
#define C_RECORDS 2      // records handed over
#define C_LOST 3         // records that could not be handed over (buffer full)
#define C_LOST_BYTES 4   // their data bytes
#define C_TRUNCATED 5    // bytes beyond MAX_PIECES * PIECE in one call (not copied)
#define C_FAULTS 6       // pieces whose buffer could not be read
#define C_FILTERED 7     // SSL calls on ignored sockets (port filter)
#define C_NOSK 8         // SSL calls with no known socket
#define C_COUNT 9

struct rec_hdr {
    u64 ts_ns;   // bpf_ktime_get_ns(): CLOCK_MONOTONIC
    u64 sk;      // struct sock address: the connection's identity while it lives
    u64 ssl;     // SSL object address (in the process)
    u64 rd;      // plaintext bytes read on this socket before this call (K_DATA) / in all (ends)
    u64 wr;      // same for bytes written
    u32 tgid;
    u32 tid;
    u32 len;     // data bytes that follow
    u32 piece;   // offset of these bytes within the call
    u32 total;   // bytes the call transferred
    s32 fd;      // the fd seen in a call on this SSL object (-1: none)
    u8 kind;
    u8 dir;
    u8 flags;
    u8 role;
    u16 family;  // AF_INET or AF_INET6 (v4-mapped addresses are left to user space)
    u16 lport;   // host byte order
    u16 rport;
    u16 pad;
    u8 laddr[16];  // network byte order; IPv4 in the first 4 bytes
    u8 raddr[16];
    u32 pad2;
};

struct conn_t {  // per socket: written at ESTABLISHED or by user space (never counters: see offs)
    u16 family;
    u16 lport;
    u16 rport;
    u8 role;
    u8 watch;
    u8 laddr[16];
    u8 raddr[16];
};

struct offs_t {  // per socket: plaintext bytes so far, each direction (written here only)
    u64 rd;
    u64 wr;
};

struct call_t {  // one SSL call in progress on a thread
    u64 ssl;
    u64 buf;
    u64 lenp;  // the _ex variants' size_t *: 0 otherwise
    u64 sk;
    s32 fd;
    u16 kind;
    u16 guess;  // sk is the memory-BIO guess (see last_recv), not from a syscall in a call
};

struct task_t {  // one thread's state
    struct call_t call;  // its SSL call in progress, while in_call
    u64 last_recv;       // the socket it last received on outside SSL calls (see on_sock), or 0
    u32 in_call;
    u32 pad;
};

struct sslkey_t {
    u64 ssl;
    u32 tgid;
    u32 pad;
};

struct sslconn_t {
    u64 sk;
    s32 fd;
    u32 guess;
};

BPF_HASH(ports, u16, u8, 1024);      // watched TCP ports, host byte order
BPF_ARRAY(config, u32, 2);           // [0]: 1 = every port; [1]: SIDE_*
BPF_PERCPU_ARRAY(counters, u64, C_COUNT);
BPF_TABLE("lru_hash", struct sslkey_t, struct sslconn_t, ssl_conns, 65536);
BPF_TABLE("lru_hash", u64, struct conn_t, conns, 65536);            // sk -> 4-tuple, watch
BPF_TABLE("lru_hash", u64, struct offs_t, offs, 65536);             // sk -> stream offsets

// The per-thread state every syscall tracepoint on the host asks for (is this thread inside an SSL
// call?): task-local storage where the kernel has it (USE_TASK_STORAGE, Linux 5.11+), a pointer
// off the task with no hashing, so the common answer (no) costs a few ns; else a hash keyed by
// pid_tgid (an LRU lookup a syscall and an LRU update a call: ~3x the programs' cost, measured).
#if USE_TASK_STORAGE
BPF_TASK_STORAGE(tasks, struct task_t);

static __always_inline struct task_t *task_state(int create) {
    return tasks.task_storage_get(bpf_get_current_task_btf(), 0,
                                  create ? BPF_LOCAL_STORAGE_GET_F_CREATE : 0);
}
#else
BPF_TABLE("lru_hash", u64, struct task_t, tasks, 16384);  // pid_tgid -> state

static __always_inline struct task_t *task_state(int create) {
    u64 id = bpf_get_current_pid_tgid();
    struct task_t *t = tasks.lookup(&id);
    if (t || !create)
        return t;
    struct task_t zero = {};
    tasks.update(&id, &zero);
    return tasks.lookup(&id);
}
#endif

static __always_inline void count(u32 idx, u64 n) {
    u64 *v = counters.lookup(&idx);
    if (v)
        *v += n;
}

#if USE_RINGBUF
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);

#if WAKEUP_EVERY
// A wake-up costs the probed process an irq_work (a self-IPI) and the reader a trip through the
// scheduler: at 1,000 requests/s, one a record would wake it 2,000 times a second. Records wait for
// the reader's timed poll instead, and every WAKEUP_EVERY records a CPU force one: the loader
// sizes it so that a burst of the largest records wakes the reader before a quarter of the ring
// is used (bcc 0.26 has no ringbuf_query to test the unread bytes themselves).
BPF_PERCPU_ARRAY(unwoken, u32, 1);

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

// A ring record's size must be a constant: a piece goes into the smallest of three sizes that
// holds it (a 100-byte request takes 256 bytes of ring, not 16 KiB). bcc allows no map calls in
// macros, hence one function a size.
struct rec_s { struct rec_hdr h; u8 data[256]; };
struct rec_m { struct rec_hdr h; u8 data[2048]; };
struct rec_l { struct rec_hdr h; u8 data[PIECE]; };

// Copies `len` (1..size) user bytes from `src`; on a fault the record goes out with F_FAULT and
// no bytes (user space sees the gap at its offset).
static __always_inline u32 fill(struct rec_hdr *h, const struct rec_hdr *tmpl, u8 *data, u32 size,
                                u64 src, u32 len) {
    __builtin_memcpy(h, tmpl, sizeof(*h));
    u64 last = (u64)len - 1;
    asm volatile("" : "+r"(last));  // the verifier must see the bound on the register passed
    if (last >= size || bpf_probe_read_user(data, last + 1, (void *)src) < 0) {
        h->flags |= F_FAULT;
        h->len = 0;
        count(C_FAULTS, 1);
        return 0;
    }
    h->len = last + 1;
    return last + 1;
}

static __always_inline void emit_s(const struct rec_hdr *t, u64 src, u32 len) {
    struct rec_s *r = events.ringbuf_reserve(sizeof(*r));
    if (!r) { count(C_LOST, 1); count(C_LOST_BYTES, len); return; }
    fill(&r->h, t, r->data, sizeof(r->data), src, len);
    events.ringbuf_submit(r, wake_flags());
    count(C_RECORDS, 1);
}

static __always_inline void emit_m(const struct rec_hdr *t, u64 src, u32 len) {
    struct rec_m *r = events.ringbuf_reserve(sizeof(*r));
    if (!r) { count(C_LOST, 1); count(C_LOST_BYTES, len); return; }
    fill(&r->h, t, r->data, sizeof(r->data), src, len);
    events.ringbuf_submit(r, wake_flags());
    count(C_RECORDS, 1);
}

static __always_inline void emit_l(const struct rec_hdr *t, u64 src, u32 len) {
    struct rec_l *r = events.ringbuf_reserve(sizeof(*r));
    if (!r) { count(C_LOST, 1); count(C_LOST_BYTES, len); return; }
    fill(&r->h, t, r->data, sizeof(r->data), src, len);
    events.ringbuf_submit(r, wake_flags());
    count(C_RECORDS, 1);
}

static __always_inline void emit_piece(void *ctx, const struct rec_hdr *t, u64 src, u32 len) {
    if (len <= 256)
        emit_s(t, src, len);
    else if (len <= 2048)
        emit_m(t, src, len);
    else
        emit_l(t, src, len);
}

static __always_inline void emit_hdr(void *ctx, const struct rec_hdr *t) {
    struct rec_hdr *r = events.ringbuf_reserve(sizeof(*r));
    if (!r) { count(C_LOST, 1); return; }
    __builtin_memcpy(r, t, sizeof(*r));
    events.ringbuf_submit(r, wake_flags());
    count(C_RECORDS, 1);
}

#else
BPF_PERF_OUTPUT(events);

// The perf path copies into a per-CPU scratch and submits a sample of the piece's size. A uprobe
// program may be preempted (it runs with migration, not preemption, disabled), so a second program
// on the same CPU could overwrite the scratch mid-use: `busy` makes that one count a loss instead.
struct rec_p { struct rec_hdr h; u8 data[PIECE]; };
BPF_PERCPU_ARRAY(scratch, struct rec_p, 1);
BPF_PERCPU_ARRAY(busy, u32, 1);

static __always_inline void emit_piece(void *ctx, const struct rec_hdr *t, u64 src, u32 len) {
    u32 zero = 0;
    u32 *b = busy.lookup(&zero);
    struct rec_p *r = scratch.lookup(&zero);
    if (!b || !r || *b) { count(C_LOST, 1); count(C_LOST_BYTES, len); return; }
    *b = 1;
    __builtin_memcpy(&r->h, t, sizeof(r->h));
    u64 last = (u64)len - 1;
    asm volatile("" : "+r"(last));
    u64 size = sizeof(struct rec_hdr);
    if (last >= PIECE || bpf_probe_read_user(r->data, last + 1, (void *)src) < 0) {
        r->h.flags |= F_FAULT;
        r->h.len = 0;
        count(C_FAULTS, 1);
    } else {
        r->h.len = last + 1;
        size += last + 1;
    }
    if (events.perf_submit(ctx, r, size) < 0) {
        count(C_LOST, 1);
        count(C_LOST_BYTES, len);
    } else {
        count(C_RECORDS, 1);
    }
    *b = 0;
}

static __always_inline void emit_hdr(void *ctx, const struct rec_hdr *t) {
    if (events.perf_submit(ctx, (void *)t, sizeof(*t)) < 0)
        count(C_LOST, 1);
    else
        count(C_RECORDS, 1);
}
#endif

static __always_inline u8 decide(u16 lport, u16 rport, u8 role) {
    u32 k0 = 0, k1 = 1;
    u32 *all = config.lookup(&k0);
    u32 *side = config.lookup(&k1);
    u32 s = side ? *side : SIDE_SERVER;
    if (all && *all) {
        if (s == SIDE_SERVER)
            return role == ROLE_PASSIVE ? W_WATCHED : W_IGNORED;
        if (s == SIDE_CLIENT)
            return role == ROLE_ACTIVE ? W_WATCHED : W_IGNORED;
        return W_WATCHED;
    }
    // One lookup at a time, each tested on its own (clang would otherwise OR the two pointers,
    // which the verifier refuses).
    if (s != SIDE_CLIENT && ports.lookup(&lport))
        return W_WATCHED;
    if (s != SIDE_SERVER && ports.lookup(&rport))
        return W_WATCHED;
    return W_IGNORED;
}

static __always_inline void tuple_into(struct rec_hdr *h, const struct conn_t *c) {
    h->flags |= F_TUPLE;
    h->family = c->family;
    h->lport = c->lport;
    h->rport = c->rport;
    h->role = c->role;
    __builtin_memcpy(h->laddr, c->laddr, 16);
    __builtin_memcpy(h->raddr, c->raddr, 16);
}

// -- socket states ---------------------------------------------------------------------------

TRACEPOINT_PROBE(sock, inet_sock_set_state) {
    if (args->protocol != IPPROTO_TCP)
        return 0;
    u64 sk = (u64)args->skaddr;
    int ns = args->newstate;
    if (ns == 1) {  // TCP_ESTABLISHED
        struct conn_t c = {};
        c.family = args->family;
        c.lport = args->sport;
        c.rport = args->dport;
        c.role = args->oldstate == 2 ? ROLE_ACTIVE : args->oldstate == 3 ? ROLE_PASSIVE : ROLE_UNKNOWN;
        if (c.family == 10) {
            bpf_probe_read_kernel(c.laddr, 16, args->saddr_v6);
            bpf_probe_read_kernel(c.raddr, 16, args->daddr_v6);
        } else {
            bpf_probe_read_kernel(c.laddr, 4, args->saddr);
            bpf_probe_read_kernel(c.raddr, 4, args->daddr);
        }
        c.watch = decide(c.lport, c.rport, c.role);
        conns.update(&sk, &c);
        struct offs_t zero = {};
        offs.update(&sk, &zero);
        if (c.watch != W_WATCHED)
            return 0;
        struct rec_hdr h = {};
        h.ts_ns = bpf_ktime_get_ns();
        h.sk = sk;
        h.kind = K_OPEN;
        h.fd = -1;
        tuple_into(&h, &c);
        emit_hdr(args, &h);
        return 0;
    }
    if (ns != 4 && ns != 8 && ns != 7)  // FIN_WAIT1, CLOSE_WAIT, CLOSE
        return 0;
    struct conn_t *c = conns.lookup(&sk);
    if (!c)
        return 0;
    if (c->watch == W_WATCHED) {
        struct rec_hdr h = {};
        h.ts_ns = bpf_ktime_get_ns();
        h.sk = sk;
        h.fd = -1;
        h.kind = ns == 4 ? K_END_LOCAL : ns == 8 ? K_END_REMOTE : K_CLOSE;
        struct offs_t *o = offs.lookup(&sk);
        if (o) {
            h.rd = o->rd;
            h.wr = o->wr;
        }
        tuple_into(&h, c);
        emit_hdr(args, &h);
    }
    if (ns == 7) {
        conns.delete(&sk);
        offs.delete(&sk);
    }
    return 0;
}

// -- the nested-syscall method: fd and socket of the thread's current SSL call ----------------

static __always_inline void remember(struct call_t *c, u32 tgid) {
    struct sslkey_t k = {};
    k.ssl = c->ssl;
    k.tgid = tgid;
    struct sslconn_t v = {};
    v.sk = c->sk;
    v.fd = c->fd;
    v.guess = c->guess;
    ssl_conns.update(&k, &v);
}

static __always_inline int on_fd(u64 fd) {
    struct task_t *t = task_state(0);
    if (!t || !t->in_call)
        return 0;
    struct call_t *c = &t->call;
    if (c->fd != (s32)fd) {
        c->fd = fd;
        c->sk = 0;  // a new fd: its socket comes with the sock tracepoint that follows
    }
    return 0;
}

// Memory BIOs (asyncio's SSLObject, some event loops): the library never touches the socket; the
// thread receives on it first and then hands the bytes to the library. For an SSL object whose
// calls never issued a syscall, the socket the thread last received on is taken (and remembered),
// which is right for a loop that processes what it just received before its next receive. Cost:
// one store in the thread's state per TCP receive on the host outside SSL calls (the state made
// at a thread's first).
static __always_inline int on_sock(u64 sk, u16 protocol, int recv) {
    if (protocol != IPPROTO_TCP)
        return 0;
    u64 id = bpf_get_current_pid_tgid();
    struct task_t *t = task_state(recv);
    if (!t)
        return 0;
    if (!t->in_call) {
        if (recv)
            t->last_recv = sk;
        return 0;
    }
    struct call_t *c = &t->call;
    if (c->sk == sk && !c->guess)
        return 0;
    c->sk = sk;
    c->guess = 0;
    remember(c, id >> 32);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_read) { return on_fd(args->fd); }
TRACEPOINT_PROBE(syscalls, sys_enter_write) { return on_fd(args->fd); }
TRACEPOINT_PROBE(syscalls, sys_enter_recvfrom) { return on_fd(args->fd); }
TRACEPOINT_PROBE(syscalls, sys_enter_sendto) { return on_fd(args->fd); }
TRACEPOINT_PROBE(sock, sock_recv_length) { return on_sock((u64)args->sk, args->protocol, args->ret > 0); }
TRACEPOINT_PROBE(sock, sock_send_length) { return on_sock((u64)args->sk, args->protocol, 0); }

// -- the library's functions -----------------------------------------------------------------

// SSL_read/SSL_write never call each other or their _ex variants in OpenSSL 1.1 and 3, so a
// thread is in at most one call: a new entry replaces a stale one (a call whose return was missed).
static __always_inline int enter(struct pt_regs *ctx, u32 kind, int ex) {
    u64 id = bpf_get_current_pid_tgid();
    struct call_t c = {};
    c.ssl = PT_REGS_PARM1(ctx);
    c.buf = PT_REGS_PARM2(ctx);
    c.lenp = ex ? PT_REGS_PARM4(ctx) : 0;
    c.kind = kind;
    c.fd = -1;
    struct sslkey_t k = {};
    k.ssl = c.ssl;
    k.tgid = id >> 32;
    struct sslconn_t *known = ssl_conns.lookup(&k);
    if (known) {
        c.sk = known->sk;
        c.fd = known->fd;
        c.guess = known->guess;
    }
    struct task_t *t = task_state(1);
    if (!t)
        return 0;
    t->call = c;
    t->in_call = 1;
    return 0;
}

static __always_inline int leave(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    struct task_t *t = task_state(0);
    if (!t || !t->in_call)
        return 0;
    struct call_t c = t->call;
    u64 last_recv = t->last_recv;
    t->in_call = 0;
    if (c.kind == CALL_HANDSHAKE)
        return 0;
    long ret = PT_REGS_RC(ctx);
    if ((int)ret <= 0)
        return 0;  // nothing transferred: the buffer's bytes are stale
    if (c.kind == CALL_READ && (!c.sk || c.guess)) {
        // No syscall in this call nor before on this object: a memory BIO (see last_recv). Only
        // a read that returned data is trusted to follow its socket's receive; the guess is
        // refreshed at every such read.
        if (last_recv) {
            c.sk = last_recv;
            c.guess = 1;
            remember(&c, id >> 32);
        }
    }
    u64 n = (u32)ret;
    if (c.lenp) {
        u64 v = 0;  // size_t
        if (bpf_probe_read_user(&v, sizeof(v), (void *)c.lenp) < 0)
            return 0;
        n = v;
    }
    if (n == 0)
        return 0;
    u64 sk = c.sk;
    struct rec_hdr h = {};
    h.kind = K_DATA;
    h.dir = c.kind == CALL_WRITE ? D_WRITE : D_READ;
    h.ts_ns = bpf_ktime_get_ns();
    h.ssl = c.ssl;
    h.tgid = id >> 32;
    h.tid = (u32)id;
    h.fd = c.fd;
    h.total = n > 0xffffffff ? 0xffffffff : n;
    if (sk) {
        struct conn_t *conn = conns.lookup(&sk);
        if (conn) {
            if (conn->watch == W_IGNORED) {
                count(C_FILTERED, 1);
                return 0;
            }
            if (conn->watch == W_WATCHED)
                tuple_into(&h, conn);
        }
        struct offs_t *o = offs.lookup(&sk);
        if (!o) {
            struct offs_t zero = {};
            offs.update(&sk, &zero);
            o = offs.lookup(&sk);
        }
        if (o) {
            // Offsets before this call's bytes; one connection's calls in one direction do not
            // overlap in practice (the library is not reentrant per SSL object), the add is atomic
            // anyway.
            if (h.dir == D_WRITE)
                h.wr = __sync_fetch_and_add(&o->wr, n);
            else
                h.rd = __sync_fetch_and_add(&o->rd, n);
        }
    } else {
        h.flags |= F_NOSK;
        count(C_NOSK, 1);
    }
    h.sk = sk;
    count(C_CALLS, 1);
    count(C_BYTES, n);
    u64 limit = (u64)MAX_PIECES * PIECE;
    if (n > limit) {
        count(C_TRUNCATED, n - limit);
        n = limit;
    }
    // A bounded loop (Linux 5.3+), not unrolled: one record a piece. The verifier walks it once
    // per iteration, which bounds MAX_PIECES (bcc cannot hand bpf_loop a callback).
#pragma clang loop unroll(disable)
    for (u32 i = 0; i < MAX_PIECES; i++) {
        u64 off = (u64)i * PIECE;
        if (off >= n)
            break;
        u64 left = n - off;
        u32 len = left > PIECE ? PIECE : left;
        h.piece = off;
        emit_piece(ctx, &h, c.buf + off, len);
    }
    return 0;
}

int enter_read(struct pt_regs *ctx) { return enter(ctx, CALL_READ, 0); }
int enter_read_ex(struct pt_regs *ctx) { return enter(ctx, CALL_READ, 1); }
int enter_write(struct pt_regs *ctx) { return enter(ctx, CALL_WRITE, 0); }
int enter_write_ex(struct pt_regs *ctx) { return enter(ctx, CALL_WRITE, 1); }
int enter_handshake(struct pt_regs *ctx) { return enter(ctx, CALL_HANDSHAKE, 0); }
int leave_call(struct pt_regs *ctx) { return leave(ctx); }

int enter_free(struct pt_regs *ctx) {
    struct sslkey_t k = {};
    k.ssl = PT_REGS_PARM1(ctx);
    k.tgid = bpf_get_current_pid_tgid() >> 32;
    ssl_conns.delete(&k);
    return 0;
}
