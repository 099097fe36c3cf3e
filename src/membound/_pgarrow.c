/*
 * membound._pgarrow: PostgreSQL results -> Arrow column buffers, in C, from the server's binary
 * COPY stream, without a Python object per value.
 *
 * Why by hand: ADBC's PostgreSQL driver reads the same binary COPY stream, but decodes it on
 * the thread that asks for the next batch, into arrays it grows value by value; ConnectorX
 * decodes on threads of its own but hands batches over an unbounded channel (a slow consumer
 * grows its memory without limit); psycopg makes a Python object per value. Here one fetch()
 * reads rows off the socket and writes them straight into one buffer per column, bounded in
 * rows and bytes, with the GIL released, and hands the buffers to Python without a copy.
 *
 * One Connection is one libpq session. It runs small statements (exec), describes a query
 * (describe: the result's columns, their type OIDs and typmods, from the server without
 * running it), and streams one COPY (...) TO STDOUT (FORMAT binary) at a time (copy, fetch).
 *
 * Column kinds (Python chooses them from the type OIDs and turns them into Arrow types):
 *   KIND_BOOL                         bits
 *   KIND_I16, KIND_I32, KIND_I64      integers (oid as int32, money as int64 cents)
 *   KIND_F32, KIND_F64                float4, float8
 *   KIND_DATE                         days since 1970-01-01 (int32)
 *   KIND_TIMESTAMP                    microseconds since 1970-01-01 (int64)
 *   KIND_TIME                         microseconds since midnight (int64)
 *   KIND_INTERVAL                     Arrow's month_day_nano (int32 months, int32 days, int64 ns)
 *   KIND_BYTES                        the value as sent (text, varchar, bpchar, name, json, bytea)
 *   KIND_JSONB                        jsonb's text (after its version byte)
 *   KIND_UUID                         the canonical 36-character text
 *   KIND_NUMERIC                      decimal128 of the column's precision and scale, rounded
 *                                     half-even to the scale
 *   KIND_LIST                         a one-dimensional array whose first index is 1, of any
 *                                     kind above but KIND_LIST (int32 offsets and a child
 *                                     column)
 * A value Arrow's type cannot hold (infinite dates and timestamps, NaN or infinite numerics,
 * numerics wider than the precision) raises Error with the column's index, never a wrong value.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "_arrowbuf.h"
#include <errno.h>
#include <libpq-fe.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>

enum {
    KIND_BOOL,
    KIND_I16,
    KIND_I32,
    KIND_I64,
    KIND_F32,
    KIND_F64,
    KIND_DATE,
    KIND_TIMESTAMP,
    KIND_TIME,
    KIND_INTERVAL,
    KIND_BYTES,
    KIND_JSONB,
    KIND_UUID,
    KIND_NUMERIC,
    KIND_LIST,
    KIND_COUNT
};

/* PostgreSQL counts dates and timestamps from 2000-01-01, Arrow from 1970-01-01. */
#define PG_EPOCH_DAYS 10957
#define PG_EPOCH_US 946684800000000LL
/* The binary COPY stream's signature, flags and header-extension length. */
static const char SIGNATURE[11] = "PGCOPY\n\377\r\n\0";

static int is_variable(int kind) {
    return kind == KIND_BYTES || kind == KIND_JSONB || kind == KIND_UUID;
}

static size_t width_of(int kind) {
    switch (kind) {
    case KIND_BOOL:
        return 0; /* bits */
    case KIND_I16:
        return 2;
    case KIND_I32:
    case KIND_F32:
    case KIND_DATE:
        return 4;
    case KIND_INTERVAL:
    case KIND_NUMERIC:
        return 16;
    default:
        return 8;
    }
}

/* -- Connection ------------------------------------------------------------------------------ */

typedef struct Column {
    int kind;
    int precision, scale; /* KIND_NUMERIC */
    Out out;
    struct Column *child; /* KIND_LIST: its elements */
    size_t count;         /* KIND_LIST's child: elements in the batch so far */
} Column;

static void column_free(Column *c) {
    out_free(&c->out);
    if (c->child != NULL) {
        column_free(c->child);
        free(c->child);
        c->child = NULL;
    }
}

typedef struct {
    PyObject_HEAD
    PGconn *conn;
    Column *cols;
    int ncols;
    int copying; /* a COPY's rows are being read */
    size_t largest; /* the largest row message received: libpq's receive buffer keeps that size */
    int header;  /* its header has been read */
    int busy;
} Connection;

static PyObject *Error; /* args: (sqlstate or None, message, column index or -1) */

static void raise_error(const char *sqlstate, const char *message, int column) {
    PyObject *args = Py_BuildValue("(zsi)", sqlstate, message, column);
    if (args != NULL) {
        PyErr_SetObject(Error, args);
        Py_DECREF(args);
    }
}

/* The connection's last error (libpq's message: lost connection, failed login, ...). */
static void raise_conn(Connection *self) {
    const char *message = self->conn ? PQerrorMessage(self->conn) : "no connection";
    raise_error(NULL, message && *message ? message : "the connection failed", -1);
}

static void raise_result(Connection *self, PGresult *res) {
    const char *message = res ? PQresultErrorMessage(res) : NULL;
    if (message == NULL || *message == '\0') {
        raise_conn(self);
        return;
    }
    raise_error(PQresultErrorField(res, PG_DIAG_SQLSTATE), message, -1);
}

static void columns_free(Connection *self) {
    if (self->cols != NULL) {
        for (int i = 0; i < self->ncols; i++) column_free(&self->cols[i]);
        free(self->cols);
        self->cols = NULL;
    }
    self->ncols = 0;
}

static void connection_close(Connection *self) {
    PGconn *conn = self->conn;
    self->conn = NULL;
    self->copying = 0;
    if (conn != NULL) {
        Py_BEGIN_ALLOW_THREADS
        PQfinish(conn);
        Py_END_ALLOW_THREADS
    }
    columns_free(self);
}

static void Connection_dealloc(Connection *self) {
    connection_close(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Notices (a ROLLBACK outside a transaction, ...) are not printed on stderr. */
static void ignore_notice(void *arg, const char *message) {
    (void)arg;
    (void)message;
}

static int Connection_init(Connection *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"conninfo", NULL};
    const char *conninfo;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "s", kwlist, &conninfo)) return -1;
    if (self->conn != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Connection already initialised");
        return -1;
    }
    PGconn *conn;
    Py_BEGIN_ALLOW_THREADS
    conn = PQconnectdb(conninfo);
    Py_END_ALLOW_THREADS
    if (conn == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    self->conn = conn;
    if (PQstatus(conn) != CONNECTION_OK) {
        raise_conn(self);
        connection_close(self);
        return -1;
    }
    PQsetNoticeProcessor(conn, ignore_notice, NULL);
    return 0;
}

static int check_open(Connection *self) {
    if (self->conn == NULL) {
        PyErr_SetString(PyExc_ValueError, "the connection is closed");
        return -1;
    }
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "the connection is in use in another thread");
        return -1;
    }
    if (self->copying) {
        PyErr_SetString(PyExc_RuntimeError, "a COPY is being read: fetch() it to its end first");
        return -1;
    }
    return 0;
}

/* exec(sql) -> rows as tuples of str or None (text format): for short statements only. */
static PyObject *Connection_exec(Connection *self, PyObject *args) {
    const char *sql;
    if (!PyArg_ParseTuple(args, "s", &sql) || check_open(self)) return NULL;
    PGresult *res;
    Py_BEGIN_ALLOW_THREADS
    res = PQexec(self->conn, sql);
    Py_END_ALLOW_THREADS
    ExecStatusType status = PQresultStatus(res);
    if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) {
        raise_result(self, res);
        PQclear(res);
        return NULL;
    }
    int nrows = PQntuples(res), nfields = PQnfields(res);
    PyObject *rows = PyList_New(nrows);
    for (int r = 0; rows != NULL && r < nrows; r++) {
        PyObject *row = PyTuple_New(nfields);
        if (row == NULL) {
            Py_CLEAR(rows);
            break;
        }
        PyList_SET_ITEM(rows, r, row);
        for (int f = 0; f < nfields; f++) {
            PyObject *v = PQgetisnull(res, r, f)
                              ? Py_NewRef(Py_None)
                              : PyUnicode_DecodeUTF8(PQgetvalue(res, r, f),
                                                     PQgetlength(res, r, f), "replace");
            if (v == NULL) {
                Py_CLEAR(rows);
                break;
            }
            PyTuple_SET_ITEM(row, f, v);
        }
    }
    PQclear(res);
    return rows;
}

/* describe(sql) -> [(name, type oid, typmod)] of the query's result, without running it. */
static PyObject *Connection_describe(Connection *self, PyObject *args) {
    const char *sql;
    if (!PyArg_ParseTuple(args, "s", &sql) || check_open(self)) return NULL;
    PGresult *res;
    Py_BEGIN_ALLOW_THREADS
    res = PQprepare(self->conn, "", sql, 0, NULL);
    if (PQresultStatus(res) == PGRES_COMMAND_OK) {
        PQclear(res);
        res = PQdescribePrepared(self->conn, "");
    }
    Py_END_ALLOW_THREADS
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        raise_result(self, res);
        PQclear(res);
        return NULL;
    }
    int nfields = PQnfields(res);
    PyObject *fields = PyList_New(nfields);
    for (int i = 0; fields != NULL && i < nfields; i++) {
        PyObject *item =
            Py_BuildValue("(sIi)", PQfname(res, i), (unsigned int)PQftype(res, i), PQfmod(res, i));
        if (item == NULL) {
            Py_CLEAR(fields);
            break;
        }
        PyList_SET_ITEM(fields, i, item);
    }
    PQclear(res);
    return fields;
}

/* How long fetch() waits for the socket before it looks at signals (Ctrl-C), in ms. */
#define WAIT_SLICE_MS 200

/* 1 when the connection's socket has data, 0 after WAIT_SLICE_MS without, -1 on error. */
static int wait_readable(PGconn *conn) {
    struct pollfd p = {.fd = PQsocket(conn), .events = POLLIN};
    if (p.fd < 0) return -1;
    int rc = poll(&p, 1, WAIT_SLICE_MS);
    if (rc < 0) return errno == EINTR ? 0 : -1;
    return rc > 0 ? 1 : 0;
}

/* Asks the server to cancel the connection's running statement (a connection of its own, the
 * GIL released); 1 when the request was sent. Safe from any thread. */
static int send_cancel(PGconn *conn) {
    PGcancel *cancel = PQgetCancel(conn);
    if (cancel == NULL) return 0;
    char message[256];
    int ok;
    Py_BEGIN_ALLOW_THREADS
    ok = PQcancel(cancel, message, sizeof message);
    Py_END_ALLOW_THREADS
    PQfreeCancel(cancel);
    return ok;
}

/* Sends `sql` and waits for its first result, looking at signals every WAIT_SLICE_MS: the
 * server may compute for minutes before it answers a COPY (its CopyOutResponse is flushed with
 * the first rows). NULL with an exception set after a Ctrl-C (the statement is cancelled on the
 * server and the connection is left to be closed), else the result (NULL: see PQerrorMessage). */
static PGresult *run_interruptibly(Connection *self, const char *sql) {
    int sent;
    Py_BEGIN_ALLOW_THREADS
    sent = PQsendQuery(self->conn, sql);
    Py_END_ALLOW_THREADS
    if (!sent) return NULL;
    for (;;) {
        int ready = 1;
        Py_BEGIN_ALLOW_THREADS
        while (PQisBusy(self->conn)) {
            ready = wait_readable(self->conn);
            if (ready <= 0 || !PQconsumeInput(self->conn)) break;
        }
        Py_END_ALLOW_THREADS
        if (ready < 0) break; /* PQgetResult reports the broken connection */
        if (ready == 0 && PyErr_CheckSignals() < 0) {
            send_cancel(self->conn);
            self->copying = 1; /* not reusable: the caller closes it */
            return NULL;
        }
        if (!PQisBusy(self->conn)) break;
    }
    PGresult *res;
    Py_BEGIN_ALLOW_THREADS
    res = PQgetResult(self->conn);
    Py_END_ALLOW_THREADS
    return res;
}

/* copy(sql, columns): start `sql` (a COPY ... TO STDOUT (FORMAT binary)) whose result has the
 * given columns, a sequence of (kind, precision, scale[, element kind]); the element kind is
 * for KIND_LIST. */
static PyObject *Connection_copy(Connection *self, PyObject *args) {
    const char *sql;
    PyObject *spec;
    if (!PyArg_ParseTuple(args, "sO", &sql, &spec) || check_open(self)) return NULL;
    PyObject *seq = PySequence_Fast(spec, "columns must be a sequence of (kind, precision, scale)");
    if (seq == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    columns_free(self);
    self->cols = calloc(n ? (size_t)n : 1, sizeof(Column));
    if (self->cols == NULL) {
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    self->ncols = (int)n;
    for (Py_ssize_t i = 0; i < n; i++) {
        Column *c = &self->cols[i];
        int element = -1;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "iii|i", &c->kind, &c->precision,
                              &c->scale, &element)) {
            Py_DECREF(seq);
            columns_free(self);
            return NULL;
        }
        int bad = element >= 0 && c->kind != KIND_LIST;
        if (c->kind == KIND_LIST) {
            bad = element < 0 || element >= KIND_LIST;
            c->child = calloc(1, sizeof(Column));
            if (c->child == NULL) {
                Py_DECREF(seq);
                columns_free(self);
                return PyErr_NoMemory();
            }
            c->child->kind = element;
            c->child->precision = c->precision;
            c->child->scale = c->scale;
        }
        const Column *v = c->child ? c->child : c;
        if (bad || v->kind < 0 || v->kind >= KIND_COUNT ||
            (v->kind == KIND_NUMERIC &&
             (v->precision < 1 || v->precision > 38 || v->scale < 0 || v->scale > v->precision))) {
            Py_DECREF(seq);
            columns_free(self);
            PyErr_Format(PyExc_ValueError, "column %zd: bad kind, precision or scale", i);
            return NULL;
        }
    }
    Py_DECREF(seq);
    PGresult *res = run_interruptibly(self, sql);
    if (res == NULL && PyErr_Occurred()) return NULL;
    ExecStatusType status = PQresultStatus(res);
    if (status != PGRES_COPY_OUT) {
        raise_result(self, res);
        PQclear(res);
        if (status == PGRES_COPY_IN || status == PGRES_COPY_BOTH) {
            self->copying = 1; /* waits for data we will not send: the caller closes it */
            return NULL;
        }
        PGresult *more;
        Py_BEGIN_ALLOW_THREADS
        while ((more = PQgetResult(self->conn)) != NULL) PQclear(more);
        Py_END_ALLOW_THREADS
        return NULL;
    }
    PQclear(res);
    self->copying = 1;
    self->header = 0;
    Py_RETURN_NONE;
}

/* -- decoding one row ------------------------------------------------------------------------ */

static inline uint16_t be16(const unsigned char *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t be32(const unsigned char *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return __builtin_bswap32(v);
}
static inline uint64_t be64(const unsigned char *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return __builtin_bswap64(v);
}

/* Why a row could not be decoded; the column is in `failed_column`. */
enum {
    OK = 0,
    FAIL_MEMORY,
    FAIL_TOO_BIG,   /* a column's values in one batch pass 2 GiB */
    FAIL_FORMAT,    /* the stream is not what the columns say */
    FAIL_INFINITE,  /* an infinite date or timestamp */
    FAIL_NUMERIC,   /* NaN, infinite, or wider than the precision */
    FAIL_INTERVAL,  /* microseconds beyond int64 nanoseconds */
    FAIL_OVERFLOW,  /* a timestamp outside int64 microseconds since 1970 */
    FAIL_DIMENSIONS, /* an array of more than one dimension */
    FAIL_BOUND,      /* an array whose first index is not 1 */
};

static const char *const FAILURES[] = {
    "",
    "out of memory",
    "a column's values in one batch exceed 2 GiB; lower the budget",
    "the COPY stream does not match the result's columns",
    "holds an infinite date or timestamp, which Arrow cannot hold",
    "holds a numeric value that does not fit",
    "holds an interval too long for Arrow's nanoseconds",
    "holds a timestamp outside the range of Arrow's microseconds",
    "holds a multi-dimensional array, which a list cannot hold with its shape",
    "holds an array whose first index is not 1, which a list cannot hold",
};

static __int128 pow10_128(int n) {
    __int128 v = 1;
    while (n-- > 0) v *= 10;
    return v;
}

/* PostgreSQL's binary numeric (base-10000 digits) -> an integer of `scale` decimals, rounded
 * half-even, below 10^precision in magnitude. */
static int decode_numeric(const unsigned char *p, int32_t len, const Column *c, __int128 *out) {
    if (len < 8) return FAIL_FORMAT;
    int ndigits = be16(p);
    int weight = (int16_t)be16(p + 2);
    unsigned sign = be16(p + 4);
    if (len != 8 + 2 * ndigits) return FAIL_FORMAT;
    if (sign != 0x0000 && sign != 0x4000) return FAIL_NUMERIC; /* NaN, +/-Infinity */
    const __int128 limit = pow10_128(c->precision);
    __int128 acc = 0;
    int kept_low = 0;  /* the exponent of the last decimal digit kept */
    int any_kept = 0;
    int first_dropped = 0, sticky = 0, dropped = 0;
    static const int divisors[4] = {1000, 100, 10, 1};
    for (int i = 0; i < ndigits; i++) {
        int digit = be16(p + 8 + 2 * i);
        if (digit > 9999) return FAIL_FORMAT;
        int base = 4 * (weight - i); /* exponent of this digit's last decimal place */
        for (int k = 0; k < 4; k++) {
            int d = (digit / divisors[k]) % 10;
            int e = base + 3 - k;
            if (e >= -c->scale) {
                if (acc > (limit - 1 - d) / 10) return FAIL_NUMERIC;
                acc = acc * 10 + d;
                kept_low = e;
                any_kept = 1;
            } else if (!dropped) {
                /* digits between the last kept and this one are zeros (none: contiguous) */
                first_dropped = e == -c->scale - 1 ? d : 0;
                sticky = e == -c->scale - 1 ? 0 : d != 0;
                dropped = 1;
            } else {
                sticky |= d != 0;
            }
        }
    }
    if (any_kept && kept_low > -c->scale) {
        for (int e = kept_low; e > -c->scale; e--) {
            if (acc > (limit - 1) / 10) return FAIL_NUMERIC;
            acc *= 10;
        }
    }
    if (first_dropped > 5 || (first_dropped == 5 && (sticky || (acc & 1)))) {
        acc += 1;
        if (acc >= limit) return FAIL_NUMERIC;
    }
    *out = sign == 0x4000 ? -acc : acc;
    return OK;
}

static void uuid_text(const unsigned char *u, char *out) {
    static const char hex[] = "0123456789abcdef";
    int j = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) out[j++] = '-';
        out[j++] = hex[u[i] >> 4];
        out[j++] = hex[u[i] & 15];
    }
}

/* A value's bit (bool) in o->values, rows appended in order from 0. */
static int out_bit(Out *o, size_t row, int bit) {
    if ((row & 7) == 0) {
        if (mem_reserve(&o->values, 1)) return -1;
        o->values.data[o->values.len++] = 0;
    }
    if (bit) o->values.data[row >> 3] |= (char)(1 << (row & 7));
    return 0;
}

/* Appends one field (p, len; len -1 for NULL) to column c at `row`; the bytes it adds in
 * *added. */
static int append_field(Column *c, size_t row, const unsigned char *p, int32_t len,
                        long long *added);

/* A one-dimensional array (p, len; not NULL) appended as the next list of column c: the
 * elements go to its child column, the list's end offset to c's offsets. */
static int append_array(Column *c, const unsigned char *p, int32_t len, long long *added) {
    Column *child = c->child;
    const unsigned char *end = p + len;
    if (len < 12) return FAIL_FORMAT;
    int32_t ndim = (int32_t)be32(p);
    p += 12; /* dimensions, has-nulls flag, element type */
    int32_t n = 0;
    if (ndim > 1) return FAIL_DIMENSIONS;
    if (ndim == 1) {
        if (end - p < 8) return FAIL_FORMAT;
        n = (int32_t)be32(p);
        if (n < 0) return FAIL_FORMAT;
        if ((int32_t)be32(p + 4) != 1) return FAIL_BOUND;
        p += 8;
    } else if (ndim != 0) {
        return FAIL_FORMAT;
    }
    for (int32_t k = 0; k < n; k++) {
        if (end - p < 4) return FAIL_FORMAT;
        int32_t elen = (int32_t)be32(p);
        p += 4;
        if (elen < -1 || elen > end - p) return FAIL_FORMAT;
        int rc = append_field(child, child->count, p, elen, added);
        if (rc != OK) return rc;
        child->count++;
        if (elen > 0) p += elen;
    }
    if (p != end) return FAIL_FORMAT;
    if (child->count > (size_t)MEMBOUND_MAX_OFFSET) return FAIL_TOO_BIG;
    return OK;
}

static int append_field(Column *c, size_t row, const unsigned char *p, int32_t len,
                        long long *added) {
    Out *o = &c->out;
    int null = len < 0;
    if (out_valid(o, row, !null)) return FAIL_MEMORY;
    if (c->kind == KIND_LIST) {
        int rc = null ? OK : append_array(c, p, len, added);
        if (rc != OK) return rc;
        if (mem_reserve(&o->offsets, 4)) return FAIL_MEMORY;
        int32_t at = (int32_t)c->child->count;
        memcpy(o->offsets.data + o->offsets.len, &at, 4);
        o->offsets.len += 4;
        *added += 4;
        return OK;
    }
    if (is_variable(c->kind)) {
        size_t n = 0;
        if (!null) {
            if (c->kind == KIND_UUID) {
                if (len != 16) return FAIL_FORMAT;
                n = 36;
            } else if (c->kind == KIND_JSONB) {
                if (len < 1 || p[0] != 1) return FAIL_FORMAT; /* jsonb's version byte */
                n = (size_t)len - 1;
            } else {
                n = (size_t)len;
            }
        }
        int too_big;
        char *at = out_bytes_at(o, n, &too_big);
        if (at == NULL) return too_big ? FAIL_TOO_BIG : FAIL_MEMORY;
        if (c->kind == KIND_UUID) {
            if (n) uuid_text(p, at);
        } else if (n) {
            memcpy(at, c->kind == KIND_JSONB ? p + 1 : p, n);
        }
        out_bytes_done(o, n);
        *added += (long long)n + 4;
        return OK;
    }
    if (c->kind == KIND_BOOL) {
        if (!null && len != 1) return FAIL_FORMAT;
        *added += 1;
        return out_bit(o, row, !null && p[0]) ? FAIL_MEMORY : OK;
    }
    size_t width = width_of(c->kind);
    *added += (long long)width;
    if (null) return out_fixed(o, NULL, width) ? FAIL_MEMORY : OK;
    unsigned char v[16];
    switch (c->kind) {
    case KIND_I16: {
        if (len != 2) return FAIL_FORMAT;
        uint16_t x = be16(p);
        memcpy(v, &x, 2);
        break;
    }
    case KIND_I32:
    case KIND_F32: {
        if (len != 4) return FAIL_FORMAT;
        uint32_t x = be32(p);
        memcpy(v, &x, 4);
        break;
    }
    case KIND_I64:
    case KIND_F64:
    case KIND_TIME: {
        if (len != 8) return FAIL_FORMAT;
        uint64_t x = be64(p);
        memcpy(v, &x, 8);
        break;
    }
    case KIND_DATE: {
        if (len != 4) return FAIL_FORMAT;
        int32_t d = (int32_t)be32(p);
        if (d == INT32_MAX || d == INT32_MIN) return FAIL_INFINITE;
        int32_t x = d + PG_EPOCH_DAYS; /* PostgreSQL's dates end far before INT32_MAX days */
        memcpy(v, &x, 4);
        break;
    }
    case KIND_TIMESTAMP: {
        if (len != 8) return FAIL_FORMAT;
        int64_t t = (int64_t)be64(p), x;
        if (t == INT64_MAX || t == INT64_MIN) return FAIL_INFINITE;
        if (__builtin_add_overflow(t, PG_EPOCH_US, &x)) return FAIL_OVERFLOW;
        memcpy(v, &x, 8);
        break;
    }
    case KIND_INTERVAL: {
        if (len != 16) return FAIL_FORMAT;
        int64_t us = (int64_t)be64(p), ns;
        int32_t days = (int32_t)be32(p + 8), months = (int32_t)be32(p + 12);
        if (__builtin_mul_overflow(us, (int64_t)1000, &ns)) return FAIL_INTERVAL;
        memcpy(v, &months, 4);
        memcpy(v + 4, &days, 4);
        memcpy(v + 8, &ns, 8);
        break;
    }
    case KIND_NUMERIC: {
        __int128 x;
        int rc = decode_numeric(p, len, c, &x);
        if (rc != OK) return rc;
        memcpy(v, &x, 16);
        break;
    }
    default:
        return FAIL_FORMAT;
    }
    return out_fixed(o, v, width) ? FAIL_MEMORY : OK;
}

/* Decodes one CopyData message (one row, the first one after the header) into the batch.
 * Returns OK, 1 for the stream's trailer, or a FAIL_* with *column set. */
static int decode_row(Connection *self, const unsigned char *p, size_t n, size_t row,
                      long long *added, int *column) {
    *column = -1;
    const unsigned char *end = p + n;
    if (!self->header) {
        if (n < 19 || memcmp(p, SIGNATURE, 11) != 0) return FAIL_FORMAT;
        uint32_t extension = be32(p + 15);
        if ((size_t)(end - (p + 19)) < extension) return FAIL_FORMAT;
        p += 19 + extension;
        self->header = 1;
    }
    if (end - p < 2) return FAIL_FORMAT;
    int16_t nfields = (int16_t)be16(p);
    p += 2;
    if (nfields == -1) return 1;
    if (nfields != self->ncols) return FAIL_FORMAT;
    for (int i = 0; i < self->ncols; i++) {
        if (end - p < 4) return FAIL_FORMAT;
        int32_t len = (int32_t)be32(p);
        p += 4;
        if (len < -1 || len > end - p) return FAIL_FORMAT; /* -1 is NULL */
        int rc = append_field(&self->cols[i], row, p, len, added);
        if (rc != OK) {
            *column = i;
            return rc;
        }
        if (len > 0) p += len;
    }
    return p == end ? OK : FAIL_FORMAT;
}

/* Reads what follows the COPY's last row: its command result (an error such as a cancel
 * shows here). 0, or -1 with the error in *res (the caller clears it). */
static int finish_copy(Connection *self, PGresult **failed) {
    PGresult *res;
    int rc = 0;
    *failed = NULL;
    while ((res = PQgetResult(self->conn)) != NULL) {
        if (PQresultStatus(res) != PGRES_COMMAND_OK && *failed == NULL) {
            *failed = res;
            rc = -1;
        } else {
            PQclear(res);
        }
    }
    return rc;
}

/* Column c ready for a batch of up to max_rows rows (a list's child for as many elements). */
static int column_begin(Column *c, size_t max_rows, size_t max_bytes) {
    if (c->kind == KIND_LIST) {
        c->child->count = 0;
        return out_begin(&c->out, max_rows, 0, 0, 1) ||
               column_begin(c->child, max_rows, max_bytes);
    }
    size_t width = c->kind == KIND_BOOL ? 1 : is_variable(c->kind) ? 16 : width_of(c->kind);
    return out_begin(&c->out, max_rows, max_rows * width, max_bytes, is_variable(c->kind));
}

/* Column c's batch handed to Python: (validity or None, nulls, values, offsets or None), and for
 * a list (validity or None, nulls, None, offsets, (its elements' tuple), elements). */
static PyObject *column_take(Column *c) {
    if (c->kind != KIND_LIST) return out_take(&c->out, is_variable(c->kind));
    PyObject *lists = out_take(&c->out, 1);
    PyObject *elements = lists ? column_take(c->child) : NULL;
    PyObject *item = NULL;
    if (elements != NULL) {
        item = Py_BuildValue("(OOOONn)", PyTuple_GET_ITEM(lists, 0), PyTuple_GET_ITEM(lists, 1),
                             Py_None, PyTuple_GET_ITEM(lists, 3), elements,
                             (Py_ssize_t)c->child->count);
    }
    Py_XDECREF(lists);
    return item;
}

/* fetch(max_rows, max_bytes) -> (rows, [(validity or None, nulls, values, offsets or None)])
 * for the next rows of the COPY, or None once it has ended (lists: see column_take). */
static PyObject *Connection_fetch(Connection *self, PyObject *args) {
    Py_ssize_t max_rows, max_bytes;
    if (!PyArg_ParseTuple(args, "nn", &max_rows, &max_bytes)) return NULL;
    if (self->conn == NULL) {
        PyErr_SetString(PyExc_ValueError, "the connection is closed");
        return NULL;
    }
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "fetch() is already running in another thread");
        return NULL;
    }
    if (!self->copying) Py_RETURN_NONE;
    if (max_rows < 1) max_rows = 1;
    for (int i = 0; i < self->ncols; i++) {
        Column *c = &self->cols[i];
        if (column_begin(c, (size_t)max_rows, (size_t)max_bytes)) return PyErr_NoMemory();
    }
    self->busy = 1;
    size_t rows = 0;
    long long bytes = 0;
    int failure = OK, column = -1, ended = 0, lost = 0;
    PGresult *failed = NULL;
    int interrupted = 0;
    for (;;) {
        int waited = 0; /* nothing arrived for WAIT_SLICE_MS: look at signals, then wait on */
        Py_BEGIN_ALLOW_THREADS
        while (rows < (size_t)max_rows && bytes < (long long)max_bytes) {
            char *buf = NULL;
            int n = PQgetCopyData(self->conn, &buf, 1);
            if (n == 0) { /* no whole row yet: wait for the socket, a slice at a time */
                int ready = wait_readable(self->conn);
                if (ready == 0) {
                    waited = 1;
                    break;
                }
                if (ready < 0 || !PQconsumeInput(self->conn)) {
                    ended = 1;
                    lost = 1;
                    break;
                }
                continue;
            }
            if (n == -1) { /* the COPY is done: its result says how it ended */
                ended = 1;
                if (finish_copy(self, &failed)) lost = 1;
                break;
            }
            if (n < 0) {
                ended = 1;
                lost = 1;
                break;
            }
            if ((size_t)n > self->largest) self->largest = (size_t)n;
            int rc = decode_row(self, (const unsigned char *)buf, (size_t)n, rows, &bytes, &column);
            PQfreemem(buf);
            if (rc == 1) continue; /* the trailer: PQgetCopyData says -1 next */
            if (rc != OK) {
                failure = rc;
                break;
            }
            rows++;
        }
        Py_END_ALLOW_THREADS
        /* A Ctrl-C while the server computes (a long sort before the first row) is seen here, on
         * the main thread, within a slice; the caller cancels the query. */
        if (waited && PyErr_CheckSignals() < 0) {
            interrupted = 1;
            break;
        }
        if (!waited) break;
    }
    self->busy = 0;
    if (interrupted) return NULL; /* the rest of the stream is not read: cancel, then close */
    if (ended) self->copying = 0;
    if (lost) {
        if (failed != NULL) {
            raise_result(self, failed);
            PQclear(failed);
        } else {
            raise_conn(self);
        }
        return NULL;
    }
    if (failure != OK) {
        /* The rest of the stream is not read: the caller cancels and closes the connection. */
        if (failure == FAIL_MEMORY) return PyErr_NoMemory();
        raise_error(NULL, FAILURES[failure], column);
        return NULL;
    }
    PyObject *columns = PyList_New(self->ncols);
    if (columns == NULL) return NULL;
    for (int i = 0; i < self->ncols; i++) {
        Column *c = &self->cols[i];
        PyObject *item = column_take(c);
        if (item == NULL) {
            Py_DECREF(columns);
            return NULL;
        }
        PyList_SET_ITEM(columns, i, item);
    }
    return Py_BuildValue("(nN)", (Py_ssize_t)rows, columns);
}

/* cancel(): ask the server to stop the running statement (from any thread). */
static PyObject *Connection_cancel(Connection *self, PyObject *Py_UNUSED(ignored)) {
    return PyBool_FromLong(self->conn != NULL && send_cancel(self->conn));
}

static PyObject *Connection_close(Connection *self, PyObject *Py_UNUSED(ignored)) {
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "fetch() is running in another thread");
        return NULL;
    }
    connection_close(self);
    Py_RETURN_NONE;
}

static PyObject *Connection_get_largest_message(Connection *self, void *Py_UNUSED(closure)) {
    return PyLong_FromSize_t(self->largest);
}

static PyMethodDef Connection_methods[] = {
    {"exec", (PyCFunction)Connection_exec, METH_VARARGS,
     "exec(sql) -> rows (tuples of str or None): run a short statement."},
    {"describe", (PyCFunction)Connection_describe, METH_VARARGS,
     "describe(sql) -> [(name, type oid, typmod)]: the query's result columns, not running it."},
    {"copy", (PyCFunction)Connection_copy, METH_VARARGS,
     "copy(sql, columns): start a COPY ... TO STDOUT (FORMAT binary); columns are "
     "(kind, precision, scale[, element kind]) per result column."},
    {"fetch", (PyCFunction)Connection_fetch, METH_VARARGS,
     "fetch(max_rows, max_bytes) -> (rows, columns) or None at the end of the COPY."},
    {"cancel", (PyCFunction)Connection_cancel, METH_NOARGS,
     "Ask the server to cancel the running statement."},
    {"close", (PyCFunction)Connection_close, METH_NOARGS, "Close the connection."},
    {NULL}};

static PyGetSetDef Connection_getset[] = {
    {"largest_message", (getter)Connection_get_largest_message, NULL,
     "bytes of the largest row received (libpq's receive buffer never shrinks below it)", NULL},
    {NULL}};

static PyTypeObject ConnectionType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "membound._pgarrow.Connection",
    .tp_basicsize = sizeof(Connection),
    .tp_dealloc = (destructor)Connection_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Connection(conninfo): a libpq session that streams binary COPY results.",
    .tp_methods = Connection_methods,
    .tp_getset = Connection_getset,
    .tp_init = (initproc)Connection_init,
    .tp_new = PyType_GenericNew,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "membound._pgarrow",
    "PostgreSQL binary COPY results as Arrow column buffers (see the C source's header).", -1,
    NULL, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__pgarrow(void) {
    if (PyType_Ready(&BufferType) < 0 || PyType_Ready(&ConnectionType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Error = PyErr_NewException("membound._pgarrow.Error", NULL, NULL);
    if (Error == NULL || PyModule_AddObjectRef(m, "Error", Error) < 0 ||
        PyModule_AddObjectRef(m, "Connection", (PyObject *)&ConnectionType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    static const char *names[KIND_COUNT] = {
        "KIND_BOOL", "KIND_I16",      "KIND_I32",   "KIND_I64",  "KIND_F32",
        "KIND_F64",  "KIND_DATE",     "KIND_TIMESTAMP", "KIND_TIME", "KIND_INTERVAL",
        "KIND_BYTES", "KIND_JSONB",   "KIND_UUID",  "KIND_NUMERIC", "KIND_LIST"};
    for (int k = 0; k < KIND_COUNT; k++) {
        if (PyModule_AddIntConstant(m, names[k], k) < 0) {
            Py_DECREF(m);
            return NULL;
        }
    }
    return m;
}
