/*
 * membound._sqlitearrow: SQLite query results -> Arrow column buffers, in C, with the GIL
 * released.
 *
 * Why by hand: ADBC's SQLite driver (which membound used before, and still uses when this
 * extension is not built) cuts batches by row count only, so membound's query had to replace
 * every text/blob value above a size limit by NULL in SQL (octet_length() per value and row)
 * and check flags in Python per batch; on two cores that reading thread was the copy's critical
 * path (2M rows of `events` to Parquet: 1.17-1.32x ConnectorX's time). Here:
 *
 * - Large values are kept out of memory by SQLite itself: SQLITE_LIMIT_LENGTH is set to the
 *   largest value a batch may take, and SQLite refuses (SQLITE_TOOBIG) a longer value *before*
 *   loading it (measured: a 200 MB text refused with RSS unchanged at 10 MB). fetch() then ends
 *   the batch before that row with STATUS_LARGE; the caller reads the row another way (blob
 *   I/O) and starts a new statement after it. The query is a plain SELECT.
 * - One call fills a whole batch, bounded in rows and in bytes, while the GIL is free for the
 *   writer; each column is read as the storage class the schema asks for.
 *
 * Column kinds (Python casts to the schema's type after):
 *   KIND_I64    INTEGER -> int64
 *   KIND_F64    REAL (INTEGER converted) -> float64
 *   KIND_TEXT   TEXT -> int32 offsets + the bytes (checked to be UTF-8 by the caller)
 *   KIND_BLOB   BLOB (TEXT accepted as its bytes) -> int32 offsets + bytes
 * A value of another storage class ends the batch before its row with STATUS_MISMATCH (SQLite
 * lets a column hold values of several types); the caller reads the rest another way.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "_arrowbuf.h"
#include <sqlite3.h>
#include <stdint.h>
#include <string.h>

enum { KIND_I64, KIND_F64, KIND_TEXT, KIND_BLOB };
enum { STATUS_MORE, STATUS_END, STATUS_MISMATCH, STATUS_LARGE };

/* -- Reader --------------------------------------------------------------------------------- */

typedef struct {
    int kind;
    Out out; /* the batch being filled */
} Column;

typedef struct {
    PyObject_HEAD
    sqlite3 *db;
    sqlite3_stmt *stmt;
    int ncols;
    Column *cols;
    int ended;
    int busy;
} Reader;

static PyObject *Error; /* args: (sqlite result code, message) */

static void raise_db(Reader *self, int rc) {
    const char *message = self->db ? sqlite3_errmsg(self->db) : sqlite3_errstr(rc);
    PyObject *args = Py_BuildValue("(is)", rc, message);
    if (args != NULL) {
        PyErr_SetObject(Error, args);
        Py_DECREF(args);
    }
}

static void columns_free(Reader *self) {
    if (self->cols == NULL) return;
    for (int i = 0; i < self->ncols; i++) out_free(&self->cols[i].out);
    free(self->cols);
    self->cols = NULL;
}

static void reader_close(Reader *self) {
    if (self->stmt != NULL) sqlite3_finalize(self->stmt);
    if (self->db != NULL) sqlite3_close_v2(self->db);
    self->stmt = NULL;
    self->db = NULL;
    self->ended = 1;
    columns_free(self);
}

static void Reader_dealloc(Reader *self) {
    reader_close(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Reader(uri, sql, kinds, max_value, cache_kib): open the database read-only (a URI filename),
 * refuse values longer than max_value bytes, set the page cache, prepare sql; kinds gives each
 * result column's KIND_*. */
static int Reader_init(Reader *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"uri", "sql", "kinds", "max_value", "cache_kib", NULL};
    const char *uri, *sql;
    PyObject *kinds;
    int max_value;
    long long cache_kib = 2000;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "ssOi|L", kwlist, &uri, &sql, &kinds,
                                     &max_value, &cache_kib))
        return -1;
    if (max_value < 1) {
        PyErr_SetString(PyExc_ValueError, "max_value must be positive");
        return -1;
    }
    if (self->db != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Reader already initialised");
        return -1;
    }
    PyObject *seq = PySequence_Fast(kinds, "kinds must be a sequence of ints");
    if (seq == NULL) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    self->cols = calloc(n ? (size_t)n : 1, sizeof(Column));
    if (self->cols == NULL) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return -1;
    }
    self->ncols = (int)n;
    for (Py_ssize_t i = 0; i < n; i++) {
        long kind = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i));
        if (kind < KIND_I64 || kind > KIND_BLOB) {
            Py_DECREF(seq);
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "unknown column kind");
            return -1;
        }
        self->cols[i].kind = (int)kind;
    }
    Py_DECREF(seq);
    int rc;
    char pragma[64];
    snprintf(pragma, sizeof pragma, "PRAGMA cache_size = -%lld", cache_kib);
    Py_BEGIN_ALLOW_THREADS
    rc = sqlite3_open_v2(uri, &self->db, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI |
                         SQLITE_OPEN_NOMUTEX, NULL);
    if (rc == SQLITE_OK) {
        sqlite3_limit(self->db, SQLITE_LIMIT_LENGTH, max_value);
        rc = sqlite3_exec(self->db, pragma, NULL, NULL, NULL);
    }
    if (rc == SQLITE_OK) rc = sqlite3_prepare_v2(self->db, sql, -1, &self->stmt, NULL);
    Py_END_ALLOW_THREADS
    if (rc != SQLITE_OK) {
        raise_db(self, rc);
        return -1;
    }
    if (sqlite3_column_count(self->stmt) != self->ncols) {
        PyErr_Format(PyExc_ValueError, "the statement has %d columns, kinds gives %d",
                     sqlite3_column_count(self->stmt), self->ncols);
        return -1;
    }
    return 0;
}

/* Whether the current row's values all have the storage class their column expects. */
static int row_fits(Reader *self) {
    for (int i = 0; i < self->ncols; i++) {
        int type = sqlite3_column_type(self->stmt, i);
        if (type == SQLITE_NULL) continue;
        switch (self->cols[i].kind) {
        case KIND_I64:
            if (type != SQLITE_INTEGER) return 0;
            break;
        case KIND_F64:
            if (type != SQLITE_FLOAT && type != SQLITE_INTEGER) return 0;
            break;
        case KIND_TEXT:
            if (type != SQLITE_TEXT) return 0;
            break;
        default:
            if (type != SQLITE_BLOB && type != SQLITE_TEXT) return 0;
        }
    }
    return 1;
}

/* Appends the current row; returns the bytes added, -1 without memory, -2 past 2 GiB. */
static long long append_row(Reader *self, size_t row) {
    long long added = 0;
    for (int i = 0; i < self->ncols; i++) {
        Column *c = &self->cols[i];
        Out *o = &c->out;
        int type = sqlite3_column_type(self->stmt, i);
        if (out_valid(o, row, type != SQLITE_NULL)) return -1;
        if (c->kind == KIND_I64 || c->kind == KIND_F64) {
            int64_t i64 = 0;
            double f64 = 0;
            const void *v = NULL;
            if (type != SQLITE_NULL && c->kind == KIND_I64) {
                i64 = sqlite3_column_int64(self->stmt, i);
                v = &i64;
            } else if (type != SQLITE_NULL) {
                f64 = sqlite3_column_double(self->stmt, i);
                v = &f64;
            }
            if (out_fixed(o, v, 8)) return -1;
            added += 8;
            continue;
        }
        const void *bytes = NULL;
        size_t n = 0;
        if (type != SQLITE_NULL) {
            /* the pointer first, then the size (SQLite's documented order) */
            bytes = c->kind == KIND_TEXT || type == SQLITE_TEXT
                        ? (const void *)sqlite3_column_text(self->stmt, i)
                        : sqlite3_column_blob(self->stmt, i);
            n = (size_t)sqlite3_column_bytes(self->stmt, i);
            if (bytes == NULL && n) return -1; /* SQLite ran out of memory */
        }
        int too_big;
        char *at = out_bytes_at(o, n, &too_big);
        if (at == NULL) return too_big ? -2 : -1;
        if (n) memcpy(at, bytes, n);
        out_bytes_done(o, n);
        added += (long long)n + 4;
    }
    return added;
}

/* fetch(max_rows, max_bytes) -> (status, rows, [(validity or None, nulls, values, offsets or
 * None)]): the next rows up to either limit (the row that crosses max_bytes included). status
 * is STATUS_END once the result has ended; STATUS_LARGE when the next row holds a value longer
 * than max_value and STATUS_MISMATCH when it holds one of an unexpected storage class (that row
 * is not in the batch, and the reader is done); else STATUS_MORE. */
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
    if (max_rows < 1) max_rows = 1;
    for (int i = 0; i < self->ncols; i++) {
        Column *c = &self->cols[i];
        if (out_begin(&c->out, (size_t)max_rows,
                      (size_t)max_rows * (c->kind <= KIND_F64 ? 8 : 16), (size_t)max_bytes + 4096,
                      c->kind >= KIND_TEXT))
            return PyErr_NoMemory();
    }
    int status = STATUS_MORE, failure = 0, rc = SQLITE_OK;
    size_t rows = 0;
    long long bytes = 0;
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    while (!self->ended && rows < (size_t)max_rows && bytes < (long long)max_bytes) {
        rc = sqlite3_step(self->stmt);
        if (rc == SQLITE_DONE) {
            self->ended = 1;
            break;
        }
        if (rc == SQLITE_TOOBIG) {
            status = STATUS_LARGE; /* the next row holds a value longer than max_value */
            self->ended = 1;
            break;
        }
        if (rc != SQLITE_ROW) {
            failure = 1;
            break;
        }
        if (!row_fits(self)) {
            status = STATUS_MISMATCH;
            self->ended = 1;
            break;
        }
        long long added = append_row(self, rows);
        if (added < 0) {
            failure = added == -1 ? 2 : 3;
            break;
        }
        bytes += added;
        rows++;
    }
    Py_END_ALLOW_THREADS
    self->busy = 0;
    if (failure) {
        self->ended = 1;
        if (failure == 1) {
            raise_db(self, rc);
        } else if (failure == 2) {
            PyErr_NoMemory();
        } else {
            PyErr_SetString(PyExc_OverflowError,
                            "a column's values in one batch exceed 2 GiB; lower the budget");
        }
        return NULL;
    }
    if (self->ended && status == STATUS_MORE) status = STATUS_END;
    PyObject *columns = PyList_New(self->ncols);
    if (columns == NULL) return NULL;
    for (int i = 0; i < self->ncols; i++) {
        PyObject *item = out_take(&self->cols[i].out, self->cols[i].kind >= KIND_TEXT);
        if (item == NULL) {
            Py_DECREF(columns);
            return NULL;
        }
        PyList_SET_ITEM(columns, i, item);
    }
    return Py_BuildValue("(inN)", status, (Py_ssize_t)rows, columns);
}

static PyObject *Reader_close(Reader *self, PyObject *Py_UNUSED(ignored)) {
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "fetch() is running in another thread");
        return NULL;
    }
    reader_close(self);
    Py_RETURN_NONE;
}

static PyMethodDef Reader_methods[] = {
    {"fetch", (PyCFunction)Reader_fetch, METH_VARARGS,
     "fetch(max_rows, max_bytes) -> (status, rows, columns)."},
    {"close", (PyCFunction)Reader_close, METH_NOARGS, "Finalize the statement, close the file."},
    {NULL}};

static PyTypeObject ReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "membound._sqlitearrow.Reader",
    .tp_basicsize = sizeof(Reader),
    .tp_dealloc = (destructor)Reader_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Reader(uri, sql, kinds, max_value, cache_kib=2000): one statement's result, "
              "in batches.",
    .tp_methods = Reader_methods,
    .tp_init = (initproc)Reader_init,
    .tp_new = PyType_GenericNew,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "membound._sqlitearrow",
    "SQLite results as Arrow column buffers (see the C source's header).", -1, NULL,
    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__sqlitearrow(void) {
    if (PyType_Ready(&BufferType) < 0 || PyType_Ready(&ReaderType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Error = PyErr_NewException("membound._sqlitearrow.Error", NULL, NULL);
    if (Error == NULL || PyModule_AddObjectRef(m, "Error", Error) < 0 ||
        PyModule_AddObjectRef(m, "Reader", (PyObject *)&ReaderType) < 0 ||
        PyModule_AddIntConstant(m, "KIND_I64", KIND_I64) < 0 ||
        PyModule_AddIntConstant(m, "KIND_F64", KIND_F64) < 0 ||
        PyModule_AddIntConstant(m, "KIND_TEXT", KIND_TEXT) < 0 ||
        PyModule_AddIntConstant(m, "KIND_BLOB", KIND_BLOB) < 0 ||
        PyModule_AddIntConstant(m, "STATUS_MORE", STATUS_MORE) < 0 ||
        PyModule_AddIntConstant(m, "STATUS_END", STATUS_END) < 0 ||
        PyModule_AddIntConstant(m, "STATUS_MISMATCH", STATUS_MISMATCH) < 0 ||
        PyModule_AddIntConstant(m, "STATUS_LARGE", STATUS_LARGE) < 0 ||
        PyModule_AddStringConstant(m, "sqlite_version", sqlite3_libversion()) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
