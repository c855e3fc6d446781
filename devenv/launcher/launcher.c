/*
 * devenv's native front door (Linux and macOS): `devenv exec` on a warm instance
 * without starting Python.
 *
 * Why it exists: a warm `devenv exec -- true` is one request to the instance's
 * host agent, which already holds the SSH connection and the guest agent. A
 * Python interpreter costs that request ~15-20 ms before it does anything, more
 * than the host agent, the SSH hop and the guest agent together; this program
 * costs ~1 ms. It does exactly what devenv/cli/entry.py's fast path and
 * devenv/hostagent/client.py's fd-passing exec do, and nothing else:
 *
 *   devenv exec [-n NAME | --name NAME | --name=NAME | -w DIR | --workdir DIR | --workdir=DIR |
 *                -e NAME[=VALUE] | --env NAME[=VALUE] | --env=NAME[=VALUE]]... -- CMD...
 *
 * resolves the instance name as entry._quick_name does, connects to
 * INSTANCE_DIR/hostagent.sock, sends {"op":"exec",...} with its stdin, stdout
 * and stderr as SCM_RIGHTS descriptors, forwards SIGINT/SIGTERM as
 * {"op":"signal"} lines, and exits with the command's exit code.
 *
 * Everything else, and every case it is not sure about (another command, an
 * unusual devenv.toml, no agent listening, a socket path too long for
 * sun_path, shell completion, an agent that answers
 * "unavailable"), runs the Python CLI instead: `devenv-py` in the same
 * directory as this program's real path, with the same arguments. Nothing is
 * sent before that decision, so a command never runs twice.
 *
 * Plain C99 + POSIX, no dependencies: built at install time by hatch_build.py
 * (devenv/launcher/build.py) where a C compiler exists.
 */

#define _DEFAULT_SOURCE
#define _DARWIN_C_SOURCE

#include <errno.h>
#include <fcntl.h>
#include <langinfo.h>
#include <limits.h>
#include <locale.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <unistd.h>

#ifdef __APPLE__
#include <mach-o/dyld.h>
#include <stdint.h>
#endif

#define FALLBACK (-1)       /* not handled here: run the Python CLI */
#define EXIT_AGENT_ERROR 255 /* what ssh returns when it cannot tell the command's own code */
#define SUN_PATH_MAX 104     /* devenv.paths.SUN_PATH_MAX: longer paths live in a short dir (Python knows it) */
#define MAX_LINE (1024 * 1024) /* devenv.hostagent.wire.MAX_LINE */
#define PY_CLI "devenv-py"
/* Set for the Python CLI when this agent already answered "unavailable" (after waiting for its guest
 * session): Python then goes straight to its SSH path instead of asking, and waiting, again. */
#define ASKED_ENV "_DEVENV_AGENT_UNAVAILABLE"
#define LAUNCHER_VERSION "1"

#ifdef MSG_NOSIGNAL
#define SEND_FLAGS MSG_NOSIGNAL /* a vanished agent is an EPIPE, not a silent death by SIGPIPE */
#else
#define SEND_FLAGS 0 /* macOS: SO_NOSIGPIPE on the socket instead */
#endif

extern char **environ;

/* ------------------------------------------------------------ growing buffer */

struct buf {
    char *data;
    size_t len, cap;
    int failed;
};

static void buf_put(struct buf *b, const char *s, size_t n) {
    if (b->failed)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->data, cap);
        if (p == NULL) {
            b->failed = 1;
            return;
        }
        b->data = p;
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

static void buf_puts(struct buf *b, const char *s) { buf_put(b, s, strlen(s)); }

/* ------------------------------------------------------------ JSON out */

/* Length of the well-formed UTF-8 sequence at s (Unicode table 3-7), or 0. */
static size_t utf8_len(const unsigned char *s, size_t avail) {
    unsigned char c = s[0];
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        return avail >= 2 && (s[1] & 0xc0) == 0x80 ? 2 : 0;
    if (c >= 0xe0 && c <= 0xef) {
        if (avail < 3 || (s[2] & 0xc0) != 0x80)
            return 0;
        unsigned char lo = c == 0xe0 ? 0xa0 : 0x80, hi = c == 0xed ? 0x9f : 0xbf;
        return s[1] >= lo && s[1] <= hi ? 3 : 0;
    }
    if (c >= 0xf0 && c <= 0xf4) {
        if (avail < 4 || (s[2] & 0xc0) != 0x80 || (s[3] & 0xc0) != 0x80)
            return 0;
        unsigned char lo = c == 0xf0 ? 0x90 : 0x80, hi = c == 0xf4 ? 0x8f : 0xbf;
        return s[1] >= lo && s[1] <= hi ? 4 : 0;
    }
    return 0;
}

/*
 * A JSON string of the bytes s. A byte that is not part of well-formed UTF-8
 * becomes \udcXX, as Python's surrogateescape reads it into sys.argv, so the
 * host agent receives exactly the str the Python client would have sent and
 * the guest gets the original bytes back.
 */
static void json_str(struct buf *b, const char *str) {
    const unsigned char *s = (const unsigned char *)str;
    size_t n = strlen(str);
    char esc[8];
    buf_put(b, "\"", 1);
    for (size_t i = 0; i < n;) {
        unsigned char c = s[i];
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            buf_put(b, esc, 2);
            i++;
        } else if (c < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", c);
            buf_put(b, esc, 6);
            i++;
        } else {
            size_t k = utf8_len(s + i, n - i);
            if (k == 0) {
                snprintf(esc, sizeof esc, "\\udc%02x", c);
                buf_put(b, esc, 6);
                i++;
            } else {
                buf_put(b, (const char *)s + i, k);
                i += k;
            }
        }
    }
    buf_put(b, "\"", 1);
}

/* ------------------------------------------------------------ JSON in (the agent's final line) */

struct reply {
    int final, unavailable, has_exit_code, has_code;
    long exit_code, code;
    struct buf error;
};

struct parser {
    const char *p, *end;
    int depth;
};

static void skip_ws(struct parser *ps) {
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
        ps->p++;
}

static int hex4(const char *p, unsigned *out) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (unsigned)(c - 'A' + 10);
        else
            return 0;
    }
    *out = v;
    return 1;
}

static void put_utf8(struct buf *b, unsigned cp) {
    char u[4];
    if (cp >= 0xd800 && cp <= 0xdfff)
        cp = 0xfffd; /* a lone surrogate: shown as the replacement character */
    if (cp < 0x80) {
        u[0] = (char)cp;
        buf_put(b, u, 1);
    } else if (cp < 0x800) {
        u[0] = (char)(0xc0 | cp >> 6);
        u[1] = (char)(0x80 | (cp & 0x3f));
        buf_put(b, u, 2);
    } else if (cp < 0x10000) {
        u[0] = (char)(0xe0 | cp >> 12);
        u[1] = (char)(0x80 | (cp >> 6 & 0x3f));
        u[2] = (char)(0x80 | (cp & 0x3f));
        buf_put(b, u, 3);
    } else {
        u[0] = (char)(0xf0 | cp >> 18);
        u[1] = (char)(0x80 | (cp >> 12 & 0x3f));
        u[2] = (char)(0x80 | (cp >> 6 & 0x3f));
        u[3] = (char)(0x80 | (cp & 0x3f));
        buf_put(b, u, 4);
    }
}

/* A JSON string at ps->p, decoded into out (NULL: skipped). 0 when malformed. */
static int parse_string(struct parser *ps, struct buf *out) {
    if (ps->p >= ps->end || *ps->p != '"')
        return 0;
    ps->p++;
    while (ps->p < ps->end) {
        unsigned char c = (unsigned char)*ps->p;
        if (c == '"') {
            ps->p++;
            return 1;
        }
        if (c < 0x20)
            return 0;
        if (c != '\\') {
            if (out)
                buf_put(out, ps->p, 1);
            ps->p++;
            continue;
        }
        if (ps->end - ps->p < 2)
            return 0;
        char e = ps->p[1];
        ps->p += 2;
        const char *simple = strchr("\"\\/bfnrt", e);
        if (e != '\0' && simple != NULL) {
            static const char decoded[] = "\"\\/\b\f\n\r\t";
            if (out)
                buf_put(out, &decoded[simple - "\"\\/bfnrt"], 1);
            continue;
        }
        if (e != 'u' || ps->end - ps->p < 4)
            return 0;
        unsigned cp;
        if (!hex4(ps->p, &cp))
            return 0;
        ps->p += 4;
        unsigned lo;
        if (cp >= 0xd800 && cp <= 0xdbff && ps->end - ps->p >= 6 && ps->p[0] == '\\' && ps->p[1] == 'u' &&
            hex4(ps->p + 2, &lo) && lo >= 0xdc00 && lo <= 0xdfff) {
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            ps->p += 6;
        }
        if (out)
            put_utf8(out, cp);
    }
    return 0;
}

static int digit(const struct parser *ps) { return ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9'; }

/* A JSON number (RFC 8259 grammar); *is_int when it has no fraction or exponent. 0 when malformed. */
static int parse_number(struct parser *ps, long *out, int *is_int) {
    const char *start = ps->p;
    if (ps->p < ps->end && *ps->p == '-')
        ps->p++;
    if (!digit(ps))
        return 0;
    if (*ps->p == '0')
        ps->p++; /* no leading zeros */
    else
        while (digit(ps))
            ps->p++;
    *is_int = 1;
    if (ps->p < ps->end && *ps->p == '.') {
        ps->p++;
        if (!digit(ps))
            return 0;
        while (digit(ps))
            ps->p++;
        *is_int = 0;
    }
    if (ps->p < ps->end && (*ps->p == 'e' || *ps->p == 'E')) {
        ps->p++;
        if (ps->p < ps->end && (*ps->p == '+' || *ps->p == '-'))
            ps->p++;
        if (!digit(ps))
            return 0;
        while (digit(ps))
            ps->p++;
        *is_int = 0;
    }
    if (*is_int) {
        char tmp[24];
        size_t n = (size_t)(ps->p - start);
        if (n >= sizeof tmp) {
            *is_int = 0; /* too large for an exit code: a number all the same */
            return 1;
        }
        memcpy(tmp, start, n);
        tmp[n] = '\0';
        *out = strtol(tmp, NULL, 10);
    }
    return 1;
}

static int literal(struct parser *ps, const char *word) {
    size_t n = strlen(word);
    if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n) != 0)
        return 0;
    ps->p += n;
    return 1;
}

static int skip_value(struct parser *ps);

static int skip_container(struct parser *ps, char close, int keyed) {
    if (++ps->depth > 64)
        return 0;
    ps->p++;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == close) {
        ps->p++;
        ps->depth--;
        return 1;
    }
    for (;;) {
        skip_ws(ps);
        if (keyed) {
            if (!parse_string(ps, NULL))
                return 0;
            skip_ws(ps);
            if (ps->p >= ps->end || *ps->p != ':')
                return 0;
            ps->p++;
            skip_ws(ps);
        }
        if (!skip_value(ps))
            return 0;
        skip_ws(ps);
        if (ps->p < ps->end && *ps->p == ',') {
            ps->p++;
            continue;
        }
        if (ps->p < ps->end && *ps->p == close) {
            ps->p++;
            ps->depth--;
            return 1;
        }
        return 0;
    }
}

static int skip_value(struct parser *ps) {
    long ignored;
    int is_int;
    if (ps->p >= ps->end)
        return 0;
    switch (*ps->p) {
    case '"':
        return parse_string(ps, NULL);
    case '{':
        return skip_container(ps, '}', 1);
    case '[':
        return skip_container(ps, ']', 0);
    case 't':
        return literal(ps, "true");
    case 'f':
        return literal(ps, "false");
    case 'n':
        return literal(ps, "null");
    default:
        return parse_number(ps, &ignored, &is_int);
    }
}

/* One control line (a JSON object) into r; 0 when it is not valid JSON of that shape. */
static int parse_reply(const char *line, size_t len, struct reply *r) {
    struct parser ps = {line, line + len, 0};
    struct buf key = {0};
    skip_ws(&ps);
    if (ps.p >= ps.end || *ps.p != '{')
        return 0;
    ps.p++;
    skip_ws(&ps);
    if (ps.p < ps.end && *ps.p == '}') {
        ps.p++;
        goto tail;
    }
    for (;;) {
        skip_ws(&ps);
        key.len = 0;
        if (!parse_string(&ps, &key) || key.failed)
            goto bad;
        buf_put(&key, "", 0);
        skip_ws(&ps);
        if (ps.p >= ps.end || *ps.p != ':')
            goto bad;
        ps.p++;
        skip_ws(&ps);
        const char *k = key.data ? key.data : "";
        int is_int = 0;
        if (strcmp(k, "final") == 0 || strcmp(k, "unavailable") == 0) {
            int *flag = k[0] == 'f' ? &r->final : &r->unavailable;
            if (literal(&ps, "true"))
                *flag = 1;
            else if (!skip_value(&ps)) /* false, null, or anything else: Python's truth of it does not matter here */
                goto bad;
        } else if (strcmp(k, "exit_code") == 0 || strcmp(k, "code") == 0) {
            long v = 0;
            int exit = k[0] == 'e';
            if (ps.p < ps.end && (*ps.p == '-' || (*ps.p >= '0' && *ps.p <= '9'))) {
                if (!parse_number(&ps, &v, &is_int))
                    goto bad;
                if (is_int) {
                    *(exit ? &r->has_exit_code : &r->has_code) = 1;
                    *(exit ? &r->exit_code : &r->code) = v;
                }
            } else if (!skip_value(&ps)) {
                goto bad;
            }
        } else if (strcmp(k, "error") == 0 && ps.p < ps.end && *ps.p == '"') {
            r->error.len = 0;
            if (!parse_string(&ps, &r->error))
                goto bad;
            buf_put(&r->error, "", 0);
        } else if (!skip_value(&ps)) {
            goto bad;
        }
        skip_ws(&ps);
        if (ps.p < ps.end && *ps.p == ',') {
            ps.p++;
            continue;
        }
        if (ps.p < ps.end && *ps.p == '}') {
            ps.p++;
            break;
        }
        goto bad;
    }
tail:
    free(key.data);
    skip_ws(&ps);
    return ps.p == ps.end;
bad:
    free(key.data);
    return 0;
}

/* ------------------------------------------------------------ which instance */

/* devenv.config.NAME_RE, as entry._plain_name checks it. */
static int plain_name(const char *v) {
    size_t n = strlen(v);
    if (n == 0 || n > 63 || v[0] == '.' || v[0] == '_' || v[0] == '-')
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = v[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
              c == '-'))
            return 0;
    }
    return 1;
}

static const char *lstrip(const char *s, const char *end) {
    while (s < end && (*s == ' ' || *s == '\t'))
        s++;
    return s;
}

static const char *rstrip(const char *s, const char *end) {
    while (end > s && (end[-1] == ' ' || end[-1] == '\t'))
        end--;
    return end;
}

static int starts(const char *s, const char *end, const char *word) {
    size_t n = strlen(word);
    return (size_t)(end - s) >= n && memcmp(s, word, n) == 0;
}

/*
 * entry._name_line: `name = "value"` (a comment may follow) -> 1 with value in
 * out; anything else -> 0 (the Python CLI decides).
 */
static int name_line(const char *s, const char *end, char *out, size_t cap) {
    const char *eq = memchr(s, '=', (size_t)(end - s));
    if (eq == NULL)
        return 0;
    const char *k0 = lstrip(s, eq), *k1 = rstrip(k0, eq);
    if (k1 - k0 != 4 || memcmp(k0, "name", 4) != 0)
        return 0;
    const char *v = lstrip(eq + 1, end);
    if (v >= end || *v != '"')
        return 0;
    v++;
    const char *close = memchr(v, '"', (size_t)(end - v));
    if (close == NULL || (size_t)(close - v) >= cap)
        return 0;
    const char *tail = lstrip(close + 1, end);
    if (tail < end && rstrip(tail, end) > tail && *tail != '#')
        return 0;
    memcpy(out, v, (size_t)(close - v));
    out[close - v] = '\0';
    return plain_name(out);
}

/*
 * The top-level `name` of one devenv.toml, as entry._quick_name reads it:
 * 1 found (out), 0 none there, -1 unsure. Only plain ASCII text (tab, LF,
 * CRLF) is read here; Python's splitlines and strip know more line breaks and
 * spaces than that, so anything else is left to Python.
 */
static int toml_name(const char *path, char *out, size_t cap) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    struct buf text = {0};
    char chunk[8192];
    ssize_t n;
    while ((n = read(fd, chunk, sizeof chunk)) > 0 && text.len < 4 * MAX_LINE)
        buf_put(&text, chunk, (size_t)n);
    close(fd);
    if (n < 0 || text.failed || text.len >= 4 * MAX_LINE) {
        free(text.data);
        return -1;
    }
    int result = 0;
    const char *p = text.data ? text.data : "", *end = p + text.len;
    for (const char *q = p; q < end; q++) {
        unsigned char c = (unsigned char)*q;
        if (c >= 0x7f || (c < 0x20 && c != '\t' && c != '\n' && c != '\r') || (c == '\r' && (q + 1 >= end || q[1] != '\n'))) {
            free(text.data);
            return -1;
        }
    }
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *line_end = nl ? nl : end;
        if (line_end > p && line_end[-1] == '\r')
            line_end--;
        const char *s = lstrip(p, line_end);
        if (starts(s, line_end, "["))
            break; /* tables begin: no top-level name */
        if (starts(s, line_end, "name")) {
            result = name_line(p, line_end, out, cap) ? 1 : -1;
            break;
        }
        p = nl ? nl + 1 : end;
    }
    free(text.data);
    return result;
}

/* The instance name, as devenv.config.resolve_name finds it; 0 when unsure. */
static int instance_name(const char *explicit_name, char *out, size_t cap) {
    if (explicit_name != NULL) {
        if (!plain_name(explicit_name) || strlen(explicit_name) >= cap)
            return 0;
        strcpy(out, explicit_name);
        return 1;
    }
    char here[PATH_MAX];
    if (getcwd(here, sizeof here) == NULL)
        return 0;
    for (;;) {
        char candidate[PATH_MAX + 16];
        snprintf(candidate, sizeof candidate, "%s%sdevenv.toml", here, strcmp(here, "/") == 0 ? "" : "/");
        struct stat st;
        if (stat(candidate, &st) == 0 && S_ISREG(st.st_mode)) {
            int found = toml_name(candidate, out, cap);
            if (found != 0)
                return found > 0;
            break;
        }
        char *slash = strrchr(here, '/');
        if (slash == NULL || strcmp(here, "/") == 0)
            break;
        if (slash == here)
            here[1] = '\0';
        else
            *slash = '\0';
    }
    const char *env = getenv("DEVENV_INSTANCE");
    if (env != NULL && env[0] != '\0') {
        if (!plain_name(env) || strlen(env) >= cap)
            return 0;
        strcpy(out, env);
        return 1;
    }
    strcpy(out, "default");
    return 1;
}

/* os.path.normpath of an absolute path (POSIX); 0 for the `//` prefix normpath keeps. */
static int normpath(const char *in, char *out, size_t cap) {
    if (in[0] != '/' || (in[1] == '/' && in[2] != '/'))
        return 0;
    size_t len = 0;
    const char *p = in;
    out[0] = '\0';
    while (*p) {
        while (*p == '/')
            p++;
        const char *seg = p;
        while (*p && *p != '/')
            p++;
        size_t n = (size_t)(p - seg);
        if (n == 0 || (n == 1 && seg[0] == '.'))
            continue;
        if (n == 2 && seg[0] == '.' && seg[1] == '.') {
            while (len > 0 && out[len - 1] != '/')
                len--;
            if (len > 0)
                len--;
            out[len] = '\0';
            continue;
        }
        if (len + 1 + n + 1 > cap)
            return 0;
        out[len++] = '/';
        memcpy(out + len, seg, n);
        len += n;
        out[len] = '\0';
    }
    if (len == 0) {
        out[0] = '/';
        out[1] = '\0';
    }
    return 1;
}

/* os.path.join(a, b) for a relative b. */
static int join(char *out, size_t cap, const char *a, const char *b) {
    size_t n = strlen(a);
    int sep = n > 0 && a[n - 1] != '/';
    return snprintf(out, cap, "%s%s%s", a, sep ? "/" : "", b) < (int)cap;
}

/* devenv.paths.home_str: DEVENV_HOME, else the per-user data dir; 0 when Python must work it out. */
static int devenv_home(char *out, size_t cap) {
    const char *home = getenv("HOME");
    const char *override = getenv("DEVENV_HOME");
    char tmp[PATH_MAX * 2];
    if (override != NULL && override[0] != '\0') {
        if (override[0] == '~') { /* os.path.expanduser: only ~ and ~/..., with HOME set */
            if ((override[1] != '\0' && override[1] != '/') || home == NULL || home[0] == '\0')
                return 0;
            if (snprintf(tmp, sizeof tmp, "%s%s", home, override + 1) >= (int)sizeof tmp)
                return 0;
        } else if (override[0] == '/') {
            if (snprintf(tmp, sizeof tmp, "%s", override) >= (int)sizeof tmp)
                return 0;
        } else {
            char cwd[PATH_MAX];
            if (getcwd(cwd, sizeof cwd) == NULL || !join(tmp, sizeof tmp, cwd, override))
                return 0;
        }
        return normpath(tmp, out, cap);
    }
    if (home == NULL || home[0] != '/')
        return 0;
#if defined(__linux__)
    const char *xdg = getenv("XDG_DATA_HOME");
    char stripped[PATH_MAX];
    if (xdg != NULL) { /* .strip(): ASCII whitespace only; anything fancier is Python's */
        const char *a = xdg, *z = xdg + strlen(xdg);
        while (a < z && strchr(" \t\n\r\v\f", *a))
            a++;
        while (z > a && strchr(" \t\n\r\v\f", z[-1]))
            z--;
        if ((size_t)(z - a) >= sizeof stripped)
            return 0;
        memcpy(stripped, a, (size_t)(z - a));
        stripped[z - a] = '\0';
        for (const char *q = stripped; *q; q++)
            if ((unsigned char)*q >= 0x80)
                return 0;
        if (stripped[0] != '\0')
            return stripped[0] == '/' ? join(out, cap, stripped, "devenv") : 0;
    }
    return snprintf(out, cap, "%s%s.local/share/devenv", home, home[strlen(home) - 1] == '/' ? "" : "/") < (int)cap;
#elif defined(__APPLE__)
    return snprintf(out, cap, "%s%sLibrary/Application Support/devenv", home, home[strlen(home) - 1] == '/' ? "" : "/") <
           (int)cap;
#else
    return 0;
#endif
}

/* ------------------------------------------------------------ the exec request */

static volatile sig_atomic_t control_fd = -1;

static void send_signal_line(int signum) {
    static const char intr[] = "{\"op\":\"signal\",\"signal\":\"INT\"}\n";
    static const char term[] = "{\"op\":\"signal\",\"signal\":\"TERM\"}\n";
    const char *msg = signum == SIGINT ? intr : term;
    size_t n = signum == SIGINT ? sizeof intr - 1 : sizeof term - 1;
    int saved = errno;
    while (n > 0 && control_fd >= 0) {
        ssize_t k = send(control_fd, msg, n, SEND_FLAGS);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        msg += k;
        n -= (size_t)k;
    }
    errno = saved;
}

static void say(const char *text) {
    size_t n = strlen(text);
    while (n > 0) {
        ssize_t k = write(2, text, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return;
        text += k;
        n -= (size_t)k;
    }
}

/* client._stdin_has_data: not a terminal (no PTY on this path) and not /dev/null. */
static int stdin_has_data(void) {
    struct stat a, b;
    if (isatty(0))
        return 0;
    if (fstat(0, &a) != 0 || stat("/dev/null", &b) != 0)
        return 0;
    return !(a.st_dev == b.st_dev && a.st_ino == b.st_ino);
}

static int send_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t k = send(fd, p, n, SEND_FLAGS);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return 0;
        }
        p += k;
        n -= (size_t)k;
    }
    return 1;
}

/*
 * Python reads sys.argv with the filesystem encoding: UTF-8 on macOS, in a
 * UTF-8 or C/POSIX locale, or with PYTHONUTF8=1; only then do bytes >= 0x80
 * mean here what they mean there. Asked only when such a byte occurs.
 */
static int utf8_argv(void) {
#if defined(__APPLE__)
    return 1;
#else
    const char *mode = getenv("PYTHONUTF8");
    if (mode != NULL && strcmp(mode, "1") == 0)
        return 1;
    const char *name = setlocale(LC_CTYPE, "");
    if (name == NULL || strcmp(name, "C") == 0 || strcmp(name, "POSIX") == 0)
        return 1;
    const char *codeset = nl_langinfo(CODESET);
    return codeset != NULL && (strcmp(codeset, "UTF-8") == 0 || strcmp(codeset, "utf8") == 0);
#endif
}

static int high_bytes(const char *s) {
    for (; *s; s++)
        if ((unsigned char)*s >= 0x80)
            return 1;
    return 0;
}

/* devenv.cli.envflags.valid_name, over the bytes before `=` (or the end). */
static int env_name_char(char c, int first) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (!first && c >= '0' && c <= '9');
}

static int env_name_ok(const char *flag) {
    if (!env_name_char(flag[0], 1))
        return 0;
    for (const char *p = flag + 1; *p && *p != '='; p++)
        if (!env_name_char(*p, 0))
            return 0;
    return 1;
}

/* One `-e` flag as envflags.parse reads it: NAME=VALUE, or NAME and the host's value (none: skipped). */
static void env_entry(const char *flag, struct buf *name, const char **value) {
    const char *eq = strchr(flag, '=');
    name->len = 0;
    buf_put(name, flag, eq ? (size_t)(eq - flag) : strlen(flag));
    buf_put(name, "", 1);
    *value = eq ? eq + 1 : name->failed ? NULL : getenv(name->data);
}

/* The request line, or NULL (FALLBACK) when Python should build it. */
static int build_request(struct buf *req, char **command, const char *cwd, const char *workdir, const char **env_flags,
                         int n_env) {
    /* One pass writes the line; a byte >= 0x80 anywhere asks utf8_argv() once at the end. */
    int high = high_bytes(cwd) || (workdir != NULL && high_bytes(workdir));
    buf_puts(req, "{\"op\":\"exec\",\"argv\":[");
    for (char **a = command; *a; a++) {
        if (a != command)
            buf_puts(req, ",");
        json_str(req, *a);
        high |= high_bytes(*a);
    }
    buf_puts(req, "],\"env\":{");
    struct buf name = {0};
    const char *value;
    int first = 1;
    for (int i = 0; i < n_env; i++) { /* a name given twice: the agent's JSON reader keeps the last, as a dict update does */
        env_entry(env_flags[i], &name, &value);
        if (value == NULL)
            continue;
        if (!first)
            buf_puts(req, ",");
        first = 0;
        json_str(req, name.failed ? "" : name.data);
        buf_puts(req, ":");
        json_str(req, value);
        high |= high_bytes(value);
    }
    req->failed |= name.failed;
    free(name.data);
    buf_puts(req, "},\"cwd\":");
    json_str(req, cwd);
    if (workdir != NULL) { /* -w: a guest directory, used as it is */
        buf_puts(req, ",\"workdir\":");
        json_str(req, workdir);
    }
    buf_puts(req, stdin_has_data() ? ",\"stdin\":true}\n" : ",\"stdin\":false}\n");
    if (high && !utf8_argv())
        return 0; /* Python reads such bytes its own way: it builds the request */
    /* The agent drops a longer line and the connection with it; Python then runs the command over SSH. */
    return !req->failed && req->len <= MAX_LINE;
}

/* The request and its three fds (SCM_RIGHTS on the first part); 0 when it did not all go. */
static int send_request(int s, const struct buf *req) {
    int fds[3] = {0, 1, 2};
    union {
        struct cmsghdr align;
        char space[CMSG_SPACE(sizeof fds)];
    } control;
    memset(&control, 0, sizeof control);
    struct iovec iov = {req->data, req->len};
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.space;
    msg.msg_controllen = sizeof control.space;
    struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof fds);
    memcpy(CMSG_DATA(cm), fds, sizeof fds);
    ssize_t sent;
    do
        sent = sendmsg(s, &msg, SEND_FLAGS);
    while (sent < 0 && errno == EINTR);
    if (sent < 0)
        return 0;
    /* A long argv: the rest follows without fds. Until its newline arrives the agent starts nothing. */
    return send_all(s, req->data + sent, req->len - (size_t)sent);
}

/* Lines from the agent until the final one: the exit code, FALLBACK for "unavailable", -2 when the line never came. */
static int read_final(int s) {
    struct buf in = {0};
    char chunk[65536];
    int code = -2;
    for (;;) {
        char *nl = in.data ? memchr(in.data, '\n', in.len) : NULL;
        if (nl == NULL) {
            if (in.len > MAX_LINE)
                break;
            ssize_t n = recv(s, chunk, sizeof chunk, 0);
            if (n < 0 && errno == EINTR)
                continue; /* a forwarded signal */
            if (n <= 0)
                break;
            buf_put(&in, chunk, (size_t)n);
            if (in.failed)
                break;
            continue;
        }
        size_t len = (size_t)(nl - in.data);
        struct reply r;
        memset(&r, 0, sizeof r);
        int parsed = parse_reply(in.data, len, &r);
        memmove(in.data, nl + 1, in.len - len - 1);
        in.len -= len + 1;
        if (parsed && !r.final) { /* stream-mode lines never come with fds passed; anything else is not for us */
            free(r.error.data);
            continue;
        }
        if (parsed && r.unavailable) {
            code = FALLBACK; /* the agent started nothing: Python's own path runs it */
            setenv(ASKED_ENV, "1", 1);
        } else if (parsed && r.has_exit_code) {
            code = (int)(r.exit_code & 0xff);
        } else if (parsed) {
            say("devenv: ");
            say(r.error.len ? r.error.data : "the host agent failed to run the command");
            say("\n");
            code = r.has_code ? (int)(r.code & 0xff) : EXIT_AGENT_ERROR;
        }
        free(r.error.data);
        break;
    }
    free(in.data);
    return code;
}

/*
 * The request is built and sent here; FALLBACK only while nothing was started.
 * Once the agent holds the request, every outcome is this program's exit code.
 */
static int exec_through_agent(const char *socket_path, char **command, const char *workdir, const char **env_flags,
                              int n_env) {
    char cwd[PATH_MAX];
    if (getcwd(cwd, sizeof cwd) == NULL)
        return FALLBACK;
    for (int fd = 0; fd < 3; fd++)
        if (fcntl(fd, F_GETFD) < 0)
            return FALLBACK; /* a closed std fd cannot be passed: Python's SSH path copes */
    struct buf req = {0};
    if (!build_request(&req, command, cwd, workdir, env_flags, n_env)) {
        free(req.data);
        return FALLBACK;
    }
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    if (s < 0) {
        free(req.data);
        return FALLBACK;
    }
    fcntl(s, F_SETFD, FD_CLOEXEC);
#ifdef SO_NOSIGPIPE
    int one = 1;
    setsockopt(s, SOL_SOCKET, SO_NOSIGPIPE, &one, sizeof one);
#endif
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    memcpy(addr.sun_path, socket_path, strlen(socket_path) + 1);
    if (connect(s, (struct sockaddr *)&addr, sizeof addr) != 0) {
        close(s);
        free(req.data);
        return FALLBACK; /* no agent listens: Python starts one or uses SSH */
    }

    /*
     * ^C from here on goes to the remote command (forward_signals). Held back
     * while the request is on its way, so a signal line never lands inside it
     * and a ^C right now is forwarded once the agent has the request.
     */
    sigset_t both, old_mask;
    sigemptyset(&both);
    sigaddset(&both, SIGINT);
    sigaddset(&both, SIGTERM);
    sigprocmask(SIG_BLOCK, &both, &old_mask);
    control_fd = s;
    struct sigaction sa, old_int, old_term;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = send_signal_line;
    sa.sa_mask = both; /* INT and TERM never interleave their lines */
    sa.sa_flags = 0;   /* no SA_RESTART: a read returns EINTR and goes on */
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);

    int sent = send_request(s, &req);
    free(req.data);
    int code = FALLBACK; /* not all sent: the agent started nothing (no newline), Python runs it */
    if (sent) {
        sigprocmask(SIG_SETMASK, &old_mask, NULL);
        code = read_final(s);
        sigprocmask(SIG_BLOCK, &both, NULL);
    }
    control_fd = -1;
    close(s);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    sigprocmask(SIG_SETMASK, &old_mask, NULL); /* a ^C held back while handing over now takes its usual effect */
    if (code == -2) {
        say("devenv: lost the connection to the host agent while the command ran\n");
        return EXIT_AGENT_ERROR;
    }
    return code;
}

/* entry._fast_exec's argument rules; FALLBACK for anything it would hand to typer. */
static int fast_exec(int argc, char **argv) {
    const char *name = NULL, *workdir = NULL;
    char **command = NULL;
    const char **env_flags = malloc(sizeof *env_flags * (size_t)(argc > 0 ? argc : 1));
    int n_env = 0;
    if (env_flags == NULL)
        return FALLBACK;
    for (char **e = environ; *e; e++)
        if (strncmp(*e, "_DEVENV_COMPLETE", 16) == 0)
            return FALLBACK;
    if (argc < 2 || strcmp(argv[1], "exec") != 0)
        return FALLBACK;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--") == 0) {
            command = argv + i + 1;
            break;
        }
        if ((strcmp(a, "-n") == 0 || strcmp(a, "--name") == 0) && i + 1 < argc) {
            name = argv[++i];
        } else if ((strcmp(a, "-w") == 0 || strcmp(a, "--workdir") == 0) && i + 1 < argc) {
            workdir = argv[++i];
        } else if ((strcmp(a, "-e") == 0 || strcmp(a, "--env") == 0) && i + 1 < argc) {
            env_flags[n_env++] = argv[++i];
        } else if (strncmp(a, "--name=", 7) == 0) {
            name = a + 7;
        } else if (strncmp(a, "--workdir=", 10) == 0) {
            workdir = a + 10;
        } else if (strncmp(a, "--env=", 6) == 0) {
            env_flags[n_env++] = a + 6;
        } else {
            return FALLBACK; /* --help, an unknown flag, or a command without `--`: typer explains */
        }
    }
    if (command == NULL || *command == NULL)
        return FALLBACK;
    for (int i = 0; i < n_env; i++)
        if (!env_name_ok(env_flags[i]))
            return FALLBACK; /* Python says what is wrong with it */
    if (workdir != NULL && workdir[0] == '\0')
        workdir = NULL; /* `workdir or None`: where the caller is */
    if (workdir != NULL && workdir[0] != '/')
        return FALLBACK; /* a relative -w: Python says what is wrong with it */

    char resolved[64];
    char home[PATH_MAX];
    char socket_path[PATH_MAX * 2];
    if (!instance_name(name, resolved, sizeof resolved) || !devenv_home(home, sizeof home))
        return FALLBACK;
    /* SUN_PATH_MAX (macOS's sun_path) is below Linux's 108 too, so whatever fits here fits sockaddr_un */
    if (snprintf(socket_path, sizeof socket_path, "%s/instances/%s/hostagent.sock", home, resolved) >=
            (int)sizeof socket_path ||
        strlen(socket_path) >= SUN_PATH_MAX)
        return FALLBACK; /* Python keeps such sockets in a short per-user dir */
    return exec_through_agent(socket_path, command, workdir, env_flags, n_env);
}

/* ------------------------------------------------------------ the Python CLI */

static int own_dir(char *out, size_t cap, const char *argv0) {
    char self[PATH_MAX];
    char real[PATH_MAX];
    int have = 0;
#if defined(__linux__)
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n > 0) {
        self[n] = '\0';
        have = 1;
    }
#elif defined(__APPLE__)
    uint32_t size = sizeof self;
    have = _NSGetExecutablePath(self, &size) == 0;
#endif
    if (!have && strchr(argv0, '/') != NULL) {
        have = snprintf(self, sizeof self, "%s", argv0) < (int)sizeof self;
    } else if (!have) { /* run from PATH without /proc: the first PATH entry holding an executable argv0 */
        const char *path = getenv("PATH");
        while (path != NULL && *path && !have) {
            const char *colon = strchr(path, ':');
            size_t n = colon ? (size_t)(colon - path) : strlen(path);
            if (n > 0 && (int)n < (int)sizeof self - 2 &&
                snprintf(self, sizeof self, "%.*s/%s", (int)n, path, argv0) < (int)sizeof self)
                have = access(self, X_OK) == 0;
            path = colon ? colon + 1 : NULL;
        }
    }
    if (!have)
        return 0;
    if (realpath(self, real) == NULL)
        return 0;
    char *slash = strrchr(real, '/');
    if (slash == NULL)
        return 0;
    *slash = '\0';
    return snprintf(out, cap, "%s", real[0] ? real : "/") < (int)cap;
}

static int run_python_cli(char **argv) {
    char dir[PATH_MAX];
    char target[PATH_MAX + 16];
    if (!own_dir(dir, sizeof dir, argv[0])) {
        say("devenv: error: cannot tell where this devenv is installed\n"
            "  hint: run the Python CLI directly: python3 -m devenv ...\n");
        return 70;
    }
    snprintf(target, sizeof target, "%s/" PY_CLI, dir);
    execv(target, argv);
    int err = errno;
    say("devenv: error: cannot run ");
    say(target);
    say(": ");
    say(strerror(err));
    say("\n  hint: reinstall devenv (pip install --force-reinstall devenv), or run python3 -m devenv ...\n");
    return 70;
}

int main(int argc, char **argv) {
    unsetenv(ASKED_ENV); /* only ever meant for the devenv-py this program runs */
    struct sigaction ign, old_pipe;
    memset(&ign, 0, sizeof ign);
    ign.sa_handler = SIG_IGN;
    sigemptyset(&ign.sa_mask);
    sigaction(SIGPIPE, &ign, &old_pipe); /* a closed stderr is an EPIPE to ignore, as in Python, not a death */
    if (argc == 2 && strcmp(argv[1], "--launcher-version") == 0) {
        fputs("devenv launcher " LAUNCHER_VERSION "\n", stdout); /* build.py's check that it runs; doctor's probe */
        return 0;
    }
    int code = fast_exec(argc, argv);
    if (code != FALLBACK)
        return code;
    sigaction(SIGPIPE, &old_pipe, NULL);
    return run_python_cli(argv);
}
