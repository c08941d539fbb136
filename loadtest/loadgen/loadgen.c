/* loadgen: a gRPC unary load generator on libnghttp2 (OpenSSL for TLS), for the MedSettle benchmarks.

   It sends pre-built gRPC messages read from a frames file (each request is a different message, so a
   Settle can carry a fresh message id every time) to one method path over several HTTP/2 connections,
   and prints one JSON line. Two modes:

     closed   fixed concurrency (connections x streams in flight), as fast as the server answers, for
              N seconds: maximum throughput.
     paced    a fixed offered rate whatever the server does (open loop): call i is scheduled at
              start + i / rate and its latency counts from that scheduled time, so a server that falls
              behind shows up in the percentiles instead of slowing the generator down with it
              (coordinated omission). A call whose HEADERS left more than --late-ms after its scheduled
              time is counted as late: the generator (or a stream limit) could not keep the schedule.

   Every call is counted under its grpc-status (from the trailers, or from a trailers-only answer);
   a stream that ends without one is counted as reset, no_status or http_<code>, never as a success.

   One thread, one epoll loop, non-blocking sockets: the generator spends a few microseconds per call,
   a small fraction of what a Python gRPC server spends, and reports its own CPU time so the benchmark
   can show that.

   Frames file: gRPC length-prefixed messages back to back (1 byte compressed flag, 4 bytes big-endian
   length, the protobuf body), exactly the DATA payload of one unary request each. --responses writes
   the successful answers in the same format. Build: see loadtest/loadgen/__init__.py. */

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define STATUS_CODES 17 /* gRPC status codes 0..16 */
#define OUT_CHUNK_BYTES 65536

typedef struct {
  const uint8_t *data;
  size_t len;
} frame_t;

struct conn;

typedef struct {
  struct conn *conn;
  size_t frame;
  size_t body_off;
  int64_t scheduled_ns; /* paced: the schedule; closed: when it was submitted */
  int grpc_status;      /* -1 until a grpc-status header arrives */
  int http_status;
  uint8_t *resp;
  size_t resp_len, resp_cap;
} call_t;

typedef struct conn {
  int fd;
  SSL *ssl;
  nghttp2_session *session;
  int outstanding;
  int dead;
  int epollout;
  uint8_t *out;
  size_t out_len, out_off, out_cap;
} conn_t;

/* options */
static const char *opt_host = "127.0.0.1";
static const char *opt_port = NULL;
static const char *opt_path = NULL;
static const char *opt_frames = NULL;
static const char *opt_responses = NULL;
static const char *opt_mode = "closed";
static const char *opt_ca = NULL, *opt_cert = NULL, *opt_key = NULL, *opt_server_name = NULL;
static int opt_tls = 0, opt_wrap = 0;
static int connections_count = 8;
static int streams_per_connection_max = 8;
static double run_seconds = 2.0;
static double rate_per_s = 0;
static double late_ms = 1.0;
static double drain_seconds = 10.0;

/* state */
static frame_t *frames;
static size_t frames_count;
static conn_t *conns;
static int epfd = -1, timer_fd = -1;
static int paced;
static size_t submitted, completed, ok_count, late_count;
static uint64_t status_counts[STATUS_CODES];
static uint64_t other_status_count, reset_count, no_status_count, conn_lost_count, http_counts[600];
static size_t connection_errors;
static char first_error[256];
static double *latencies_ms;
static size_t latencies_len, latencies_cap;
static int64_t last_completion_ns;
static FILE *responses_file;
static size_t rr_next; /* paced: round-robin over connections */
static char authority[300];
static nghttp2_nv request_headers[7];

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void note_error(const char *fmt, ...) {
  if (first_error[0]) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(first_error, sizeof first_error, fmt, ap);
  va_end(ap);
}

static void json_string(FILE *f, const char *s) {
  fputc('"', f);
  for (; *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\') fprintf(f, "\\%c", ch);
    else if (ch < 0x20) fprintf(f, "\\u%04x", ch);
    else fputc(ch, f);
  }
  fputc('"', f);
}

static void fail_early(const char *fmt, ...) {
  /* before any call was sent: one JSON line with the reason, and a non-zero exit */
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  printf("{\"error\":");
  json_string(stdout, msg);
  printf("}\n");
  exit(2);
}

static void *xrealloc(void *p, size_t n) {
  void *q = realloc(p, n);
  if (!q) fail_early("out of memory");
  return q;
}

static void load_frames(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) fail_early("cannot open frames file %s: %s", path, strerror(errno));
  uint8_t *buf = NULL;
  size_t len = 0, cap = 0;
  for (;;) {
    if (len == cap) buf = xrealloc(buf, cap = cap ? cap * 2 : 1 << 16);
    size_t n = fread(buf + len, 1, cap - len, f);
    if (n == 0) break;
    len += n;
  }
  fclose(f);
  size_t cap_frames = 0;
  for (size_t off = 0; off < len;) {
    if (len - off < 5) fail_early("frames file %s: truncated header at byte %zu", path, off);
    if (buf[off] > 1) fail_early("frames file %s: bad compressed flag at byte %zu", path, off);
    size_t body = (size_t)buf[off + 1] << 24 | (size_t)buf[off + 2] << 16 | (size_t)buf[off + 3] << 8 |
                  buf[off + 4];
    if (len - off - 5 < body) fail_early("frames file %s: truncated message at byte %zu", path, off);
    if (frames_count == cap_frames)
      frames = xrealloc(frames, (cap_frames = cap_frames ? cap_frames * 2 : 1024) * sizeof *frames);
    frames[frames_count++] = (frame_t){buf + off, body + 5};
    off += body + 5;
  }
  if (frames_count == 0) fail_early("frames file %s holds no message", path);
}

/* ------------------------------------------------------------------ completion accounting */

static void record_latency(double ms) {
  if (latencies_len == latencies_cap)
    latencies_ms = xrealloc(latencies_ms, (latencies_cap = latencies_cap ? latencies_cap * 2 : 4096) *
                                              sizeof *latencies_ms);
  latencies_ms[latencies_len++] = ms;
}

static void finish_call(call_t *call, uint32_t error_code) {
  int64_t t = now_ns();
  completed++;
  last_completion_ns = t;
  if (call->grpc_status >= 0) {
    if (call->grpc_status < STATUS_CODES) status_counts[call->grpc_status]++;
    else other_status_count++;
  } else if (error_code != NGHTTP2_NO_ERROR) {
    reset_count++;
  } else if (call->http_status > 0 && call->http_status != 200 && call->http_status < 600) {
    http_counts[call->http_status]++;
  } else {
    no_status_count++;
  }
  if (call->grpc_status == 0) {
    ok_count++;
    record_latency((double)(t - call->scheduled_ns) / 1e6);
    if (responses_file && call->resp_len) fwrite(call->resp, 1, call->resp_len, responses_file);
  }
  call->conn->outstanding--;
  free(call->resp);
  free(call);
}

/* ------------------------------------------------------------------ nghttp2 callbacks */

static int on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags, void *user) {
  (void)flags;
  (void)user;
  if (frame->hd.type != NGHTTP2_HEADERS) return 0;
  call_t *call = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
  if (!call) return 0;
  char text[16];
  size_t n = valuelen < sizeof text - 1 ? valuelen : sizeof text - 1;
  memcpy(text, value, n);
  text[n] = 0;
  if (namelen == 7 && memcmp(name, ":status", 7) == 0) call->http_status = atoi(text);
  else if (namelen == 11 && memcmp(name, "grpc-status", 11) == 0) call->grpc_status = atoi(text);
  return 0;
}

static int on_data_chunk(nghttp2_session *session, uint8_t flags, int32_t stream_id, const uint8_t *data,
                         size_t len, void *user) {
  (void)flags;
  (void)user;
  if (!responses_file) return 0;
  call_t *call = nghttp2_session_get_stream_user_data(session, stream_id);
  if (!call) return 0;
  if (call->resp_len + len > call->resp_cap) {
    call->resp_cap = (call->resp_len + len) * 2;
    call->resp = xrealloc(call->resp, call->resp_cap);
  }
  memcpy(call->resp + call->resp_len, data, len);
  call->resp_len += len;
  return 0;
}

static int on_frame_send(nghttp2_session *session, const nghttp2_frame *frame, void *user) {
  (void)user;
  if (!paced || frame->hd.type != NGHTTP2_HEADERS) return 0;
  call_t *call = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
  if (call && (double)(now_ns() - call->scheduled_ns) / 1e6 > late_ms) late_count++;
  return 0;
}

static int on_stream_close(nghttp2_session *session, int32_t stream_id, uint32_t error_code, void *user) {
  (void)user;
  call_t *call = nghttp2_session_get_stream_user_data(session, stream_id);
  if (call && !call->conn->dead) { /* a dead connection's calls were counted as conn_lost already */
    nghttp2_session_set_stream_user_data(session, stream_id, NULL);
    finish_call(call, error_code);
  }
  return 0;
}

static ssize_t read_body(nghttp2_session *session, int32_t stream_id, uint8_t *buf, size_t length,
                         uint32_t *data_flags, nghttp2_data_source *source, void *user) {
  (void)session;
  (void)stream_id;
  (void)user;
  call_t *call = source->ptr;
  const frame_t *fr = &frames[call->frame];
  size_t n = fr->len - call->body_off;
  if (n > length) n = length;
  memcpy(buf, fr->data + call->body_off, n);
  call->body_off += n;
  if (call->body_off == fr->len) *data_flags |= NGHTTP2_DATA_FLAG_EOF;
  return (ssize_t)n;
}

/* ------------------------------------------------------------------ connections */

static void set_epollout(conn_t *c, int on) {
  if (c->epollout == on) return;
  struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.ptr = c};
  epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
  c->epollout = on;
}

static void conn_kill(conn_t *c, const char *why) {
  if (c->dead) return;
  c->dead = 1;
  connection_errors++;
  note_error("connection lost: %s", why);
  /* the calls in flight on it never got an answer: count them, do not drop them */
  conn_lost_count += (uint64_t)c->outstanding;
  completed += (size_t)c->outstanding;
  c->outstanding = 0;
  epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
  nghttp2_session_del(c->session); /* frees no call_t: they leak, the process ends soon */
  c->session = NULL;
  close(c->fd);
}

static const char *ssl_reason(void) {
  unsigned long e = ERR_get_error();
  const char *reason = e ? ERR_reason_error_string(e) : NULL;
  return reason ? reason : "TLS error";
}

static int conn_flush(conn_t *c) {
  while (!c->dead) {
    if (c->out_off == c->out_len) {
      c->out_off = c->out_len = 0;
      while (c->out_len < OUT_CHUNK_BYTES) {
        const uint8_t *data;
        ssize_t n = nghttp2_session_mem_send(c->session, &data);
        if (n < 0) {
          conn_kill(c, nghttp2_strerror((int)n));
          return -1;
        }
        if (n == 0) break;
        if (c->out_len + (size_t)n > c->out_cap)
          c->out = xrealloc(c->out, c->out_cap = (c->out_len + (size_t)n) * 2);
        memcpy(c->out + c->out_len, data, (size_t)n);
        c->out_len += (size_t)n;
      }
      if (c->out_len == 0) {
        set_epollout(c, 0);
        return 0;
      }
    }
    size_t want = c->out_len - c->out_off;
    ssize_t w;
    if (c->ssl) {
      w = SSL_write(c->ssl, c->out + c->out_off, (int)want);
      if (w <= 0) {
        int e = SSL_get_error(c->ssl, (int)w);
        if (e == SSL_ERROR_WANT_WRITE) {
          set_epollout(c, 1);
          return 0;
        }
        if (e == SSL_ERROR_WANT_READ) return 0;
        conn_kill(c, ssl_reason());
        return -1;
      }
    } else {
      w = send(c->fd, c->out + c->out_off, want, MSG_NOSIGNAL);
      if (w < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
          set_epollout(c, 1);
          return 0;
        }
        conn_kill(c, strerror(errno));
        return -1;
      }
    }
    c->out_off += (size_t)w;
  }
  return -1;
}

static void conn_read(conn_t *c) {
  uint8_t buf[65536];
  while (!c->dead) {
    ssize_t n;
    if (c->ssl) {
      n = SSL_read(c->ssl, buf, sizeof buf);
      if (n <= 0) {
        int e = SSL_get_error(c->ssl, (int)n);
        if (e == SSL_ERROR_WANT_READ) return;
        if (e == SSL_ERROR_WANT_WRITE) {
          set_epollout(c, 1);
          return;
        }
        conn_kill(c, e == SSL_ERROR_ZERO_RETURN ? "closed by the server" : ssl_reason());
        return;
      }
    } else {
      n = recv(c->fd, buf, sizeof buf, 0);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return;
        conn_kill(c, strerror(errno));
        return;
      }
      if (n == 0) {
        conn_kill(c, "closed by the server");
        return;
      }
    }
    ssize_t r = nghttp2_session_mem_recv(c->session, buf, (size_t)n);
    if (r < 0) {
      conn_kill(c, nghttp2_strerror((int)r));
      return;
    }
  }
}

static SSL_CTX *tls_context(void) {
  SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
  if (!ctx) fail_early("SSL_CTX_new failed");
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION); /* HTTP/2 needs TLS 1.2 or later */
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  static const unsigned char alpn[] = {2, 'h', '2'};
  SSL_CTX_set_alpn_protos(ctx, alpn, sizeof alpn);
  if (opt_ca) {
    if (SSL_CTX_load_verify_locations(ctx, opt_ca, NULL) != 1)
      fail_early("cannot load CA file %s: %s", opt_ca, ssl_reason());
  } else {
    SSL_CTX_set_default_verify_paths(ctx);
  }
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
  if (opt_cert) {
    if (SSL_CTX_use_certificate_chain_file(ctx, opt_cert) != 1)
      fail_early("cannot load client certificate %s: %s", opt_cert, ssl_reason());
    if (SSL_CTX_use_PrivateKey_file(ctx, opt_key ? opt_key : opt_cert, SSL_FILETYPE_PEM) != 1)
      fail_early("cannot load client key: %s", ssl_reason());
    if (SSL_CTX_check_private_key(ctx) != 1) fail_early("the client key does not match its certificate");
  }
  return ctx;
}

static void conn_open(conn_t *c, SSL_CTX *ctx) {
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res;
  int rc = getaddrinfo(opt_host, opt_port, &hints, &res);
  if (rc != 0) fail_early("cannot resolve %s: %s", opt_host, gai_strerror(rc));
  c->fd = socket(res->ai_family, SOCK_STREAM, 0);
  if (c->fd < 0 || connect(c->fd, res->ai_addr, res->ai_addrlen) != 0)
    fail_early("cannot connect to %s:%s: %s", opt_host, opt_port, strerror(errno));
  freeaddrinfo(res);
  int one = 1;
  setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* small frames must not wait */
  if (ctx) {
    /* a blocking handshake before the loop starts: simpler, and outside the measured window */
    c->ssl = SSL_new(ctx);
    SSL_set_fd(c->ssl, c->fd);
    const char *name = opt_server_name ? opt_server_name : opt_host;
    struct in6_addr ip;
    int is_ip = inet_pton(AF_INET, name, &ip) == 1 || inet_pton(AF_INET6, name, &ip) == 1;
    if (is_ip) {
      X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), name);
    } else {
      SSL_set_tlsext_host_name(c->ssl, name);
      SSL_set1_host(c->ssl, name);
    }
    if (SSL_connect(c->ssl) != 1) fail_early("TLS handshake with %s:%s failed: %s", opt_host, opt_port,
                                             ssl_reason());
    const unsigned char *proto;
    unsigned int proto_len;
    SSL_get0_alpn_selected(c->ssl, &proto, &proto_len);
    if (proto_len != 2 || memcmp(proto, "h2", 2) != 0) fail_early("the server did not agree to h2 (ALPN)");
  }
  fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);

  nghttp2_session_callbacks *cb;
  nghttp2_session_callbacks_new(&cb);
  nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
  nghttp2_session_callbacks_set_on_frame_send_callback(cb, on_frame_send);
  nghttp2_session_client_new(&c->session, cb, c);
  nghttp2_session_callbacks_del(cb);
  /* large windows: answers must never wait for a WINDOW_UPDATE */
  nghttp2_settings_entry settings[] = {
      {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1 << 24},
  };
  nghttp2_submit_settings(c->session, NGHTTP2_FLAG_NONE, settings, 2);
  nghttp2_session_set_local_window_size(c->session, NGHTTP2_FLAG_NONE, 0, 1 << 30);

  struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
  epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
}

#define NV(n, v) {(uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, 0, NGHTTP2_NV_FLAG_NONE}

static void build_headers(void) {
  snprintf(authority, sizeof authority, "%s:%s", opt_server_name ? opt_server_name : opt_host, opt_port);
  nghttp2_nv nv[] = {
      NV(":method", "POST"),
      NV(":scheme", opt_tls ? "https" : "http"),
      NV(":path", opt_path),
      NV(":authority", authority),
      NV("content-type", "application/grpc"),
      NV("te", "trailers"),
      NV("user-agent", "medsettle-loadgen"),
  };
  for (size_t i = 0; i < sizeof nv / sizeof nv[0]; i++) {
    nv[i].valuelen = strlen((const char *)nv[i].value);
    request_headers[i] = nv[i];
  }
}

static int submit(conn_t *c, size_t frame, int64_t scheduled_ns) {
  call_t *call = calloc(1, sizeof *call);
  if (!call) fail_early("out of memory");
  call->conn = c;
  call->frame = frame;
  call->scheduled_ns = scheduled_ns;
  call->grpc_status = -1;
  nghttp2_data_provider body = {.source.ptr = call, .read_callback = read_body};
  int32_t id = nghttp2_submit_request(c->session, NULL, request_headers, 7, &body, call);
  if (id < 0) {
    free(call);
    note_error("submit failed: %s", nghttp2_strerror(id));
    return -1;
  }
  c->outstanding++;
  submitted++;
  return 0;
}

static void arm_timer(int64_t at_ns) {
  struct itimerspec its = {0};
  if (at_ns < 1) at_ns = 1; /* a zero time would disarm it; one in the past fires at once */
  its.it_value.tv_sec = at_ns / 1000000000LL;
  its.it_value.tv_nsec = at_ns % 1000000000LL;
  timerfd_settime(timer_fd, TFD_TIMER_ABSTIME, &its, NULL);
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double pct(double q) {
  if (!latencies_len) return -1;
  size_t i = (size_t)(q * (double)latencies_len);
  return latencies_ms[i < latencies_len ? i : latencies_len - 1];
}

static double cpu_seconds(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
         (double)ru.ru_stime.tv_usec / 1e6;
}

static void usage(void) {
  fprintf(stderr,
          "usage: loadgen --port P --path /pkg.Service/Method --frames FILE [--host H]\n"
          "               [--mode closed|paced] [--seconds S] [--rate R] [--connections C]\n"
          "               [--streams N] [--late-ms MS] [--drain-seconds S] [--wrap]\n"
          "               [--responses FILE] [--tls] [--ca FILE] [--cert FILE --key FILE]\n"
          "               [--server-name NAME]\n");
  exit(64);
}

int main(int argc, char **argv) {
  static struct option longopts[] = {
      {"host", required_argument, 0, 'h'},        {"port", required_argument, 0, 'p'},
      {"path", required_argument, 0, 'P'},        {"frames", required_argument, 0, 'f'},
      {"mode", required_argument, 0, 'm'},        {"seconds", required_argument, 0, 's'},
      {"rate", required_argument, 0, 'r'},        {"connections", required_argument, 0, 'c'},
      {"streams", required_argument, 0, 'n'},     {"late-ms", required_argument, 0, 'l'},
      {"drain-seconds", required_argument, 0, 'd'}, {"wrap", no_argument, 0, 'w'},
      {"responses", required_argument, 0, 'R'},   {"tls", no_argument, 0, 't'},
      {"ca", required_argument, 0, 'A'},          {"cert", required_argument, 0, 'C'},
      {"key", required_argument, 0, 'K'},         {"server-name", required_argument, 0, 'S'},
      {0, 0, 0, 0}};
  int ch;
  while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
    switch (ch) {
      case 'h': opt_host = optarg; break;
      case 'p': opt_port = optarg; break;
      case 'P': opt_path = optarg; break;
      case 'f': opt_frames = optarg; break;
      case 'm': opt_mode = optarg; break;
      case 's': run_seconds = atof(optarg); break;
      case 'r': rate_per_s = atof(optarg); break;
      case 'c': connections_count = atoi(optarg); break;
      case 'n': streams_per_connection_max = atoi(optarg); break;
      case 'l': late_ms = atof(optarg); break;
      case 'd': drain_seconds = atof(optarg); break;
      case 'w': opt_wrap = 1; break;
      case 'R': opt_responses = optarg; break;
      case 't': opt_tls = 1; break;
      case 'A': opt_ca = optarg; opt_tls = 1; break;
      case 'C': opt_cert = optarg; opt_tls = 1; break;
      case 'K': opt_key = optarg; opt_tls = 1; break;
      case 'S': opt_server_name = optarg; break;
      default: usage();
    }
  }
  if (!opt_port || !opt_path || !opt_frames || connections_count < 1 || streams_per_connection_max < 1 ||
      run_seconds <= 0)
    usage();
  if (strcmp(opt_mode, "paced") == 0) paced = 1;
  else if (strcmp(opt_mode, "closed") != 0) usage();
  if (paced && rate_per_s <= 0) fail_early("--mode paced needs --rate > 0");
  signal(SIGPIPE, SIG_IGN);

  load_frames(opt_frames);
  if (opt_responses && !(responses_file = fopen(opt_responses, "wb")))
    fail_early("cannot write %s: %s", opt_responses, strerror(errno));
  build_headers();
  epfd = epoll_create1(0);
  timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
  struct epoll_event tev = {.events = EPOLLIN, .data.ptr = NULL};
  epoll_ctl(epfd, EPOLL_CTL_ADD, timer_fd, &tev);

  SSL_CTX *ctx = opt_tls ? tls_context() : NULL;
  conns = calloc((size_t)connections_count, sizeof *conns);
  for (int i = 0; i < connections_count; i++) conn_open(&conns[i], ctx);

  /* paced: how many calls the schedule holds; without --wrap no frame is sent twice */
  size_t planned = paced ? (size_t)(run_seconds * rate_per_s) : SIZE_MAX;
  if (!opt_wrap && planned > frames_count) planned = frames_count;
  int frames_exhausted = 0;

  double cpu0 = cpu_seconds();
  int64_t t0 = now_ns();
  int64_t end_ns = t0 + (int64_t)(run_seconds * 1e9);
  int64_t drain_end_ns = 0;
  double interval_ns = paced ? 1e9 / rate_per_s : 0;
  int stopping = 0, blocked = 0;
  int64_t armed_ns = -1;
  struct epoll_event events[64];

  for (;;) {
    int64_t t = now_ns();
    if (!stopping) {
      if (paced) {
        /* every call whose time has come, round-robin over the connections with room */
        blocked = 0;
        while (submitted < planned && t0 + (int64_t)((double)submitted * interval_ns) <= t) {
          conn_t *c = NULL;
          for (int k = 0; k < connections_count; k++) {
            conn_t *cand = &conns[(rr_next + (size_t)k) % (size_t)connections_count];
            if (!cand->dead && cand->outstanding < streams_per_connection_max) {
              c = cand;
              rr_next = (rr_next + (size_t)k + 1) % (size_t)connections_count;
              break;
            }
          }
          if (!c) { /* all full: the call waits for a free stream, and will be counted late */
            blocked = 1;
            break;
          }
          int64_t scheduled = t0 + (int64_t)((double)submitted * interval_ns);
          if (submit(c, submitted % frames_count, scheduled) != 0) {
            conn_kill(c, "cannot submit a request");
            continue;
          }
        }
        if (submitted >= planned) {
          stopping = 1;
          frames_exhausted = !opt_wrap && planned == frames_count &&
                             planned < (size_t)(run_seconds * rate_per_s);
        }
      } else {
        if (t >= end_ns) stopping = 1;
        for (int k = 0; k < connections_count && !stopping; k++) {
          conn_t *c = &conns[k];
          while (!c->dead && c->outstanding < streams_per_connection_max) {
            if (!opt_wrap && submitted >= frames_count) {
              frames_exhausted = stopping = 1;
              break;
            }
            if (submit(c, submitted % frames_count, t) != 0) conn_kill(c, "cannot submit a request");
          }
        }
      }
      if (stopping) drain_end_ns = t + (int64_t)(drain_seconds * 1e9);
    }
    int alive = 0, in_flight = 0;
    for (int k = 0; k < connections_count; k++) {
      if (conns[k].dead) continue;
      conn_flush(&conns[k]);
      if (!conns[k].dead) {
        alive++;
        in_flight += conns[k].outstanding;
      }
    }
    if (!alive) break;
    if (stopping && in_flight == 0) break;
    if (stopping && t >= drain_end_ns) break;

    int64_t wake = stopping ? drain_end_ns : end_ns;
    if (paced && !stopping) wake = t0 + (int64_t)((double)submitted * interval_ns);
    if (blocked && !stopping && wake < t + 1000000) wake = t + 1000000; /* a completion wakes us first */
    if (wake != armed_ns) arm_timer(armed_ns = wake);
    int n = epoll_wait(epfd, events, 64, -1);
    for (int i = 0; i < n; i++) {
      conn_t *c = events[i].data.ptr;
      if (!c) {
        uint64_t ticks;
        ssize_t r = read(timer_fd, &ticks, sizeof ticks);
        (void)r;
        armed_ns = -1; /* one-shot: fired, so the next wake must be armed again */
        continue;
      }
      if (events[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) conn_read(c);
      if (!c->dead && (events[i].events & EPOLLOUT)) conn_flush(c);
    }
  }
  double cpu_s = cpu_seconds() - cpu0;
  size_t unfinished = 0;
  for (int k = 0; k < connections_count; k++) unfinished += conns[k].dead ? 0 : (size_t)conns[k].outstanding;
  if (responses_file) fclose(responses_file);

  double seconds = (double)((last_completion_ns > t0 ? last_completion_ns : now_ns()) - t0) / 1e9;
  qsort(latencies_ms, latencies_len, sizeof *latencies_ms, cmp_double);
  size_t errors = completed - ok_count + unfinished;

  printf("{\"mode\":\"%s\",\"path\":", paced ? "paced" : "closed");
  json_string(stdout, opt_path);
  printf(",\"tls\":%s,\"connections\":%d,\"streams\":%d", opt_tls ? "true" : "false", connections_count,
         streams_per_connection_max);
  if (paced) printf(",\"rate_per_s\":%.3f", rate_per_s);
  printf(",\"seconds_planned\":%.3f,\"seconds\":%.6f", run_seconds, seconds);
  printf(",\"sent\":%zu,\"calls\":%zu,\"ok\":%zu,\"errors\":%zu,\"unfinished\":%zu", submitted, completed,
         ok_count, errors, unfinished);
  printf(",\"calls_per_s\":%.3f,\"ok_per_s\":%.3f", seconds > 0 ? (double)completed / seconds : 0.0,
         seconds > 0 ? (double)ok_count / seconds : 0.0);
  printf(",\"status\":{");
  const char *sep = "";
  for (int i = 0; i < STATUS_CODES; i++)
    if (status_counts[i]) {
      printf("%s\"%d\":%llu", sep, i, (unsigned long long)status_counts[i]);
      sep = ",";
    }
  for (int i = 0; i < 600; i++)
    if (http_counts[i]) {
      printf("%s\"http_%d\":%llu", sep, i, (unsigned long long)http_counts[i]);
      sep = ",";
    }
  struct {
    const char *name;
    uint64_t n;
  } others[] = {{"other", other_status_count}, {"reset", reset_count}, {"no_status", no_status_count},
                {"conn_lost", conn_lost_count}, {"unfinished", unfinished}};
  for (size_t i = 0; i < sizeof others / sizeof others[0]; i++)
    if (others[i].n) {
      printf("%s\"%s\":%llu", sep, others[i].name, (unsigned long long)others[i].n);
      sep = ",";
    }
  printf("}");
  if (latencies_len)
    printf(",\"latency_ms\":{\"p50\":%.3f,\"p99\":%.3f,\"p999\":%.3f,\"max\":%.3f}", pct(0.5), pct(0.99),
           pct(0.999), latencies_ms[latencies_len - 1]);
  else
    printf(",\"latency_ms\":null");
  printf(",\"late\":%zu,\"late_ms\":%.3f", late_count, late_ms);
  printf(",\"frames\":%zu,\"frames_exhausted\":%s", frames_count, frames_exhausted ? "true" : "false");
  printf(",\"cpu_s\":%.6f,\"cpu_us_per_call\":%.3f", cpu_s, completed ? cpu_s * 1e6 / (double)completed : 0.0);
  /* a low stream limit from the server would queue calls inside nghttp2: say what it was */
  uint32_t remote_streams_max = 0;
  for (int k = 0; k < connections_count; k++)
    if (!conns[k].dead) {
      remote_streams_max =
          nghttp2_session_get_remote_settings(conns[k].session, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
      break;
    }
  printf(",\"server_streams_max\":%u", remote_streams_max);
  printf(",\"connection_errors\":%zu,\"error\":", connection_errors);
  if (first_error[0]) json_string(stdout, first_error);
  else printf("null");
  printf("}\n");
  return 0;
}
