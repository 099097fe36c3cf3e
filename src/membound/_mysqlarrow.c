/*
 * membound._mysqlarrow: MySQL/MariaDB results -> Arrow column buffers, in C, without a Python
 * object per value.
 *
 * Why by hand: no library reads MySQL into Arrow within a memory bound at this speed.
 * ConnectorX (Rust) is as fast but hands its batches over an unbounded channel (a slow consumer
 * grows its memory without limit); MariaDB Connector/Python and mysqlclient make a Python object
 * per value (2M rows of `events`: ~1.3x ConnectorX's time, most of it in making and freeing those
 * objects); arrow-odbc over MariaDB Connector/ODBC measured 2.9-3.4 s and 449 MB for the same
 * 2M rows (the ODBC driver buffers the whole result).
 *
 * One Reader is one connection running one statement through libmariadb's prepared-statement
 * API (the binary protocol: the server formats no numbers or dates), unbuffered: rows come off
 * the socket as fetch() asks for them, and nothing but the current batch is held. fetch() fills
 * one buffer per column (validity bits, values, and offsets for variable-width columns) up to a
 * row count or a byte count, whichever comes first, with the GIL released, and hands the buffers
 * over to Python without a copy (objects with the buffer protocol, for pa.py_buffer).
 *
 * Column kinds (Python turns them into the column's Arrow type):
 *   KIND_I64, KIND_U64  integers of every width and YEAR, as 64-bit
 *   KIND_F32, KIND_F64  FLOAT, DOUBLE
 *   KIND_DATE           days since 1970-01-01 (int32); zero and impossible dates are NULL
 *   KIND_DATETIME       microseconds since 1970-01-01 00:00 of the wall time (int64); as DATE
 *   KIND_TIME           signed microseconds (int64), -838:59:59 to 838:59:59
 *   KIND_BYTES          everything else (text, blobs, DECIMAL as text, BIT, JSON, ...):
 *                       int32 offsets and the bytes
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "_arrowbuf.h"
#include <errno.h>
#include <mysql.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

enum { KIND_I64, KIND_U64, KIND_F32, KIND_F64, KIND_DATE, KIND_DATETIME, KIND_TIME, KIND_BYTES };

/* Bytes a text/blob value may take in its column's staging buffer before it is fetched on its
 * own (mysql_stmt_fetch_column). Most values fit; a wider one costs a second call. */
#define STAGE_BYTES 1024
/* The error code for a statement without a result (MySQL's client code CR_NO_RESULT_SET, which
 * libmariadb's headers do not define). */
#define NO_RESULT_SET 2053

/* -- Reader --------------------------------------------------------------------------------- */

typedef struct {
    int kind;
    enum enum_field_types type;
    /* what mysql_stmt_fetch writes into */
    union {
        long long i;
        double d;
        float f;
        MYSQL_TIME t;
    } value;
    char *stage;
    unsigned long length;
    my_bool is_null;
    my_bool error;
    Out out; /* the batch being filled */
} Column;

typedef struct {
    PyObject_HEAD
    MYSQL *conn;
    MYSQL_STMT *stmt;
    unsigned int ncols;
    MYSQL_BIND *binds;
    Column *cols;
    PyObject *fields; /* list of (name, type, length, decimals, flags, charsetnr, kind) */
    int ended;
    int busy;
} Reader;

static PyObject *Error; /* args: (code, message) */

static void raise_error(unsigned int code, const char *message) {
    PyObject *args = Py_BuildValue("(Is)", code, message);
    if (args != NULL) {
        PyErr_SetObject(Error, args);
        Py_DECREF(args);
    }
}

static void raise_conn(Reader *self) {
    raise_error(mysql_errno(self->conn), mysql_error(self->conn));
}

static void raise_stmt(Reader *self) {
    /* An error that ends an unbuffered result is the connection's, not copied to the
     * statement. */
    if (mysql_stmt_errno(self->stmt) == 0 && mysql_errno(self->conn) != 0) {
        raise_conn(self);
        return;
    }
    raise_error(mysql_stmt_errno(self->stmt), mysql_stmt_error(self->stmt));
}

static void columns_free(Reader *self) {
    if (self->cols != NULL) {
        for (unsigned int i = 0; i < self->ncols; i++) {
            Column *c = &self->cols[i];
            free(c->stage);
            out_free(&c->out);
        }
        free(self->cols);
        self->cols = NULL;
    }
    free(self->binds);
    self->binds = NULL;
}

/* Stop the server sending the rest of an unfinished result: libmariadb would otherwise read it
 * all to the end (possibly gigabytes) when the statement is closed. */
static void shutdown_socket(Reader *self) {
    if (self->conn != NULL && self->stmt != NULL && !self->ended) {
        my_socket fd = mysql_get_socket(self->conn);
        if (fd >= 0) shutdown(fd, SHUT_RDWR);
    }
}

static void reader_close(Reader *self) {
    shutdown_socket(self);
    Py_BEGIN_ALLOW_THREADS
    if (self->stmt != NULL) mysql_stmt_close(self->stmt);
    if (self->conn != NULL) mysql_close(self->conn);
    Py_END_ALLOW_THREADS
    self->stmt = NULL;
    self->conn = NULL;
    self->ended = 1;
    columns_free(self);
}

static void Reader_dealloc(Reader *self) {
    reader_close(self);
    Py_XDECREF(self->fields);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int kind_of(MYSQL_FIELD *f) {
    switch (f->type) {
    case MYSQL_TYPE_TINY:
    case MYSQL_TYPE_SHORT:
    case MYSQL_TYPE_INT24:
    case MYSQL_TYPE_LONG:
    case MYSQL_TYPE_LONGLONG:
    case MYSQL_TYPE_YEAR:
        return (f->flags & UNSIGNED_FLAG) ? KIND_U64 : KIND_I64;
    case MYSQL_TYPE_FLOAT:
        return KIND_F32;
    case MYSQL_TYPE_DOUBLE:
        return KIND_F64;
    case MYSQL_TYPE_DATE:
    case MYSQL_TYPE_NEWDATE:
        return KIND_DATE;
    case MYSQL_TYPE_DATETIME:
    case MYSQL_TYPE_TIMESTAMP:
        return KIND_DATETIME;
    case MYSQL_TYPE_TIME:
        return KIND_TIME;
    default:
        return KIND_BYTES;
    }
}

static int Reader_init(Reader *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"host", "user", "password", "database", "port", "unix_socket",
                             "connect_timeout", "init_command", NULL};
    const char *host, *user, *password, *database, *unix_socket, *init_command = NULL;
    unsigned int port, timeout = 10;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "zzzzIz|Iz", kwlist, &host, &user, &password,
                                     &database, &port, &unix_socket, &timeout, &init_command))
        return -1;
    if (self->conn != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Reader already initialised");
        return -1;
    }
    self->conn = mysql_init(NULL);
    if (self->conn == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    my_bool yes = 1;
    mysql_options(self->conn, MYSQL_OPT_CONNECT_TIMEOUT, &timeout);
    mysql_options(self->conn, MYSQL_SET_CHARSET_NAME, "utf8mb4");
    mysql_options(self->conn, MYSQL_REPORT_DATA_TRUNCATION, &yes);
    if (init_command != NULL) mysql_options(self->conn, MYSQL_INIT_COMMAND, init_command);
    MYSQL *ok;
    Py_BEGIN_ALLOW_THREADS
    ok = mysql_real_connect(self->conn, host, user, password, database, port, unix_socket, 0);
    Py_END_ALLOW_THREADS
    /* The read runs in a transaction, as on the other read paths: its snapshot and its
     * metadata lock last until the reader is closed, so a DROP TABLE waits for it even once
     * the server has sent the last rows (they may still be in the socket's buffers). */
    my_bool failed = 1;
    if (ok != NULL) {
        Py_BEGIN_ALLOW_THREADS
        failed = mysql_autocommit(self->conn, 0);
        Py_END_ALLOW_THREADS
    }
    if (failed) {
        raise_conn(self);
        return -1;
    }
    return 0;
}

/* execute(query): prepare and run the statement (no parameters); its columns are in fields. */
static PyObject *Reader_execute(Reader *self, PyObject *args) {
    const char *query;
    Py_ssize_t query_len;
    if (!PyArg_ParseTuple(args, "s#", &query, &query_len)) return NULL;
    if (self->conn == NULL) {
        PyErr_SetString(PyExc_ValueError, "the reader is closed");
        return NULL;
    }
    if (self->stmt != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "a Reader runs one statement");
        return NULL;
    }
    self->stmt = mysql_stmt_init(self->conn);
    if (self->stmt == NULL) {
        raise_conn(self);
        return NULL;
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = mysql_stmt_prepare(self->stmt, query, (unsigned long)query_len);
    if (rc == 0) rc = mysql_stmt_execute(self->stmt);
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        raise_stmt(self);
        self->ended = 1;
        return NULL;
    }
    MYSQL_RES *meta = mysql_stmt_result_metadata(self->stmt);
    if (meta == NULL) {
        if (mysql_stmt_errno(self->stmt)) {
            raise_stmt(self);
        } else {
            raise_error(NO_RESULT_SET, "the statement returns no result set");
        }
        self->ended = 1;
        return NULL;
    }
    self->ncols = mysql_num_fields(meta);
    MYSQL_FIELD *fields = mysql_fetch_fields(meta);
    self->binds = calloc(self->ncols ? self->ncols : 1, sizeof(MYSQL_BIND));
    self->cols = calloc(self->ncols ? self->ncols : 1, sizeof(Column));
    self->fields = PyList_New(self->ncols);
    if (self->binds == NULL || self->cols == NULL || self->fields == NULL) {
        mysql_free_result(meta);
        PyErr_NoMemory();
        return NULL;
    }
    for (unsigned int i = 0; i < self->ncols; i++) {
        MYSQL_FIELD *f = &fields[i];
        Column *c = &self->cols[i];
        MYSQL_BIND *b = &self->binds[i];
        c->kind = kind_of(f);
        c->type = f->type;
        b->is_null = &c->is_null;
        b->error = &c->error;
        b->length = &c->length;
        switch (c->kind) {
        case KIND_I64:
        case KIND_U64:
            b->buffer_type = MYSQL_TYPE_LONGLONG;
            b->buffer = &c->value.i;
            b->is_unsigned = c->kind == KIND_U64;
            break;
        case KIND_F32:
            b->buffer_type = MYSQL_TYPE_FLOAT;
            b->buffer = &c->value.f;
            break;
        case KIND_F64:
            b->buffer_type = MYSQL_TYPE_DOUBLE;
            b->buffer = &c->value.d;
            break;
        case KIND_DATE:
        case KIND_DATETIME:
        case KIND_TIME:
            b->buffer_type = c->kind == KIND_DATE   ? MYSQL_TYPE_DATE
                             : c->kind == KIND_TIME ? MYSQL_TYPE_TIME
                                                    : MYSQL_TYPE_DATETIME;
            b->buffer = &c->value.t;
            b->buffer_length = sizeof(MYSQL_TIME);
            break;
        default:
            c->stage = malloc(STAGE_BYTES);
            if (c->stage == NULL) {
                mysql_free_result(meta);
                PyErr_NoMemory();
                return NULL;
            }
            b->buffer_type = MYSQL_TYPE_BLOB; /* the bytes as sent, whatever the column type */
            b->buffer = c->stage;
            b->buffer_length = STAGE_BYTES;
        }
        PyObject *item = Py_BuildValue(
            "(s#iIIIIi)", f->name, (Py_ssize_t)f->name_length, (int)f->type,
            (unsigned int)f->length, (unsigned int)f->decimals, (unsigned int)f->flags,
            (unsigned int)f->charsetnr, c->kind);
        if (item == NULL) {
            mysql_free_result(meta);
            return NULL;
        }
        PyList_SET_ITEM(self->fields, i, item);
    }
    mysql_free_result(meta);
    if (self->ncols && mysql_stmt_bind_result(self->stmt, self->binds)) {
        raise_stmt(self);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar (H. Hinnant's algorithm). */
static long long days_from_civil(long long y, unsigned m, unsigned d) {
    y -= m <= 2;
    long long era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (long long)doe - 719468;
}

static int valid_date(const MYSQL_TIME *t) {
    static const unsigned char days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (t->month < 1 || t->month > 12 || t->day < 1) return 0;
    unsigned last = days[t->month - 1];
    if (t->month == 2 && t->year % 4 == 0 && (t->year % 100 != 0 || t->year % 400 == 0)) last = 29;
    return t->day <= last;
}

/* Appends the current row's value of column i; returns the bytes it adds, or -1 (no memory),
 * -2 (past 2 GiB in the batch), -3 (the value's second fetch failed). */
static long long append_value(Reader *self, unsigned int i, size_t row) {
    Column *c = &self->cols[i];
    Out *o = &c->out;
    int null = c->is_null;
    if (!null && (c->kind == KIND_DATE || c->kind == KIND_DATETIME) && !valid_date(&c->value.t))
        null = 1; /* zero dates (0000-00-00) and dates no calendar has */
    if (out_valid(o, row, !null)) return -1;
    switch (c->kind) {
    case KIND_I64:
    case KIND_U64:
    case KIND_F64:
    case KIND_DATETIME:
    case KIND_TIME: {
        int64_t v = 0;
        if (c->kind == KIND_F64) {
            memcpy(&v, &c->value.d, 8);
        } else if (c->kind == KIND_DATETIME || c->kind == KIND_TIME) {
            const MYSQL_TIME *t = &c->value.t;
            long long days = c->kind == KIND_TIME ? (long long)t->day
                                                  : days_from_civil(t->year, t->month, t->day);
            v = ((days * 24 + t->hour) * 60 + t->minute) * 60 + t->second;
            v = v * 1000000 + t->second_part;
            if (c->kind == KIND_TIME && t->neg) v = -v;
        } else {
            v = c->value.i;
        }
        return out_fixed(o, null ? NULL : &v, 8) ? -1 : 8;
    }
    case KIND_F32:
        return out_fixed(o, null ? NULL : &c->value.f, 4) ? -1 : 4;
    case KIND_DATE: {
        int32_t v = null ? 0
                         : (int32_t)days_from_civil(c->value.t.year, c->value.t.month,
                                                    c->value.t.day);
        return out_fixed(o, &v, 4) ? -1 : 4;
    }
    default: {
        size_t n = null ? 0 : c->length;
        int too_big;
        char *at = out_bytes_at(o, n, &too_big);
        if (at == NULL) return too_big ? -2 : -1;
        if (n > STAGE_BYTES) {
            /* Wider than its staging buffer: fetched again, straight into the batch. */
            MYSQL_BIND whole;
            memset(&whole, 0, sizeof whole);
            unsigned long got = 0;
            whole.buffer_type = MYSQL_TYPE_BLOB;
            whole.buffer = at;
            whole.buffer_length = n;
            whole.length = &got;
            if (mysql_stmt_fetch_column(self->stmt, &whole, i, 0)) return -3;
        } else if (n) {
            memcpy(at, c->stage, n);
        }
        out_bytes_done(o, n);
        return (long long)n + 4;
    }
    }
}

/* fetch(max_rows, max_bytes) -> (rows, [(validity or None, nulls, values, offsets or None)])
 * for the next rows, or None once the result has ended. */
static PyObject *Reader_fetch(Reader *self, PyObject *args) {
    Py_ssize_t max_rows, max_bytes;
    if (!PyArg_ParseTuple(args, "nn", &max_rows, &max_bytes)) return NULL;
    if (self->stmt == NULL) {
        PyErr_SetString(PyExc_ValueError, "the reader is closed");
        return NULL;
    }
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "fetch() is already running in another thread");
        return NULL;
    }
    if (self->ended) Py_RETURN_NONE;
    if (max_rows < 1) max_rows = 1;
    for (unsigned int i = 0; i < self->ncols; i++) {
        Column *c = &self->cols[i];
        size_t width = c->kind == KIND_F32 || c->kind == KIND_DATE ? 4 : 8;
        if (out_begin(&c->out, (size_t)max_rows, (size_t)max_rows * width, (size_t)max_bytes,
                      c->kind == KIND_BYTES))
            return PyErr_NoMemory();
    }
    self->busy = 1;
    size_t rows = 0;
    long long bytes = 0;
    int rc = 0, failure = 0;
    Py_BEGIN_ALLOW_THREADS
    while (rows < (size_t)max_rows && bytes < (long long)max_bytes) {
        rc = mysql_stmt_fetch(self->stmt);
        if (rc == MYSQL_NO_DATA) {
            self->ended = 1;
            break;
        }
        if (rc == 1) {
            failure = 1; /* the server's or the connection's error */
            break;
        }
        for (unsigned int i = 0; i < self->ncols; i++) {
            long long added = append_value(self, i, rows);
            if (added < 0) {
                failure = (int)-added + 1; /* 2: memory, 3: 2 GiB in a column, 4: refetch */
                break;
            }
            bytes += added;
        }
        if (failure) break;
        rows++;
    }
    Py_END_ALLOW_THREADS
    self->busy = 0;
    if (failure) {
        self->ended = 1;
        if (failure == 1 || failure == 4) {
            raise_stmt(self);
        } else if (failure == 2) {
            PyErr_NoMemory();
        } else {
            raise_error(0, "a column's values in one batch exceed 2 GiB; lower the budget");
        }
        return NULL;
    }
    PyObject *columns = PyList_New(self->ncols);
    if (columns == NULL) return NULL;
    for (unsigned int i = 0; i < self->ncols; i++) {
        Column *c = &self->cols[i];
        PyObject *item = out_take(&c->out, c->kind == KIND_BYTES);
        if (item == NULL) {
            Py_DECREF(columns);
            return NULL;
        }
        PyList_SET_ITEM(columns, i, item);
    }
    PyObject *result = Py_BuildValue("(nN)", (Py_ssize_t)rows, columns);
    return result;
}

static PyObject *Reader_close(Reader *self, PyObject *Py_UNUSED(ignored)) {
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "fetch() is running in another thread");
        return NULL;
    }
    reader_close(self);
    Py_RETURN_NONE;
}

static PyObject *Reader_get_fields(Reader *self, void *Py_UNUSED(closure)) {
    if (self->fields == NULL) return PyList_New(0);
    return Py_NewRef(self->fields);
}

static PyObject *Reader_get_ended(Reader *self, void *Py_UNUSED(closure)) {
    return PyBool_FromLong(self->ended);
}

static PyMethodDef Reader_methods[] = {
    {"fetch", (PyCFunction)Reader_fetch, METH_VARARGS,
     "fetch(max_rows, max_bytes) -> (rows, columns) or None at the end of the result."},
    {"execute", (PyCFunction)Reader_execute, METH_VARARGS,
     "execute(query): prepare and run a statement without parameters, unbuffered."},
    {"close", (PyCFunction)Reader_close, METH_NOARGS,
     "Close the statement and the connection (an unfinished result is not read to its end)."},
    {NULL}};

static PyObject *Reader_get_thread_id(Reader *self, void *Py_UNUSED(closure)) {
    if (self->conn == NULL) Py_RETURN_NONE;
    return PyLong_FromUnsignedLong(mysql_thread_id(self->conn));
}

static PyGetSetDef Reader_getset[] = {
    {"fields", (getter)Reader_get_fields, NULL,
     "(name, type, length, decimals, flags, charsetnr, kind) per result column", NULL},
    {"thread_id", (getter)Reader_get_thread_id, NULL,
     "the connection's id on the server (None once closed)", NULL},
    {"ended", (getter)Reader_get_ended, NULL, "whether the result has been read to its end",
     NULL},
    {NULL}};

static PyTypeObject ReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "membound._mysqlarrow.Reader",
    .tp_basicsize = sizeof(Reader),
    .tp_dealloc = (destructor)Reader_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Reader(host, user, password, database, port, unix_socket, connect_timeout=10, "
              "init_command=None): a connection that streams one statement's result.",
    .tp_methods = Reader_methods,
    .tp_getset = Reader_getset,
    .tp_init = (initproc)Reader_init,
    .tp_new = PyType_GenericNew,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "membound._mysqlarrow",
    "MySQL/MariaDB results as Arrow column buffers (see the C source's header).", -1, NULL,
    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__mysqlarrow(void) {
    if (PyType_Ready(&BufferType) < 0 || PyType_Ready(&ReaderType) < 0) return NULL;
    if (mysql_library_init(0, NULL, NULL)) {
        PyErr_SetString(PyExc_ImportError, "libmariadb failed to initialise");
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Error = PyErr_NewException("membound._mysqlarrow.Error", NULL, NULL);
    if (Error == NULL || PyModule_AddObjectRef(m, "Error", Error) < 0 ||
        PyModule_AddObjectRef(m, "Reader", (PyObject *)&ReaderType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    const char *names[] = {"KIND_I64",      "KIND_U64",  "KIND_F32",  "KIND_F64",
                           "KIND_DATE",     "KIND_DATETIME", "KIND_TIME", "KIND_BYTES"};
    for (int k = 0; k < 8; k++) {
        if (PyModule_AddIntConstant(m, names[k], k) < 0) {
            Py_DECREF(m);
            return NULL;
        }
    }
    return m;
}
