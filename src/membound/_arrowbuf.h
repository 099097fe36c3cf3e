/*
 * Column buffers shared by membound's C readers (_mysqlarrow.c, _sqlitearrow.c), each of which
 * includes this file once: growable memory filled with the GIL released, and the Python object
 * that owns such memory once a batch is handed over (buffer protocol, for pa.py_buffer: Arrow
 * adopts it without a copy).
 */
#ifndef MEMBOUND_ARROWBUF_H
#define MEMBOUND_ARROWBUF_H

#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* The largest offset of a variable-width column in one batch (Arrow's int32 offsets). */
#define MEMBOUND_MAX_OFFSET 0x7fffffffLL

/* -- Buffer: malloc'd memory handed to Python, freed with the object ------------------------ */

typedef struct {
    PyObject_HEAD
    char *data;
    Py_ssize_t size;
} Buffer;

static void Buffer_dealloc(Buffer *self) {
    free(self->data);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Buffer_getbuffer(Buffer *self, Py_buffer *view, int flags) {
    return PyBuffer_FillInfo(view, (PyObject *)self, self->data, self->size, 1, flags);
}

static PyBufferProcs Buffer_as_buffer = {(getbufferproc)Buffer_getbuffer, NULL};

static PyTypeObject BufferType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "membound.Buffer",
    .tp_basicsize = sizeof(Buffer),
    .tp_dealloc = (destructor)Buffer_dealloc,
    .tp_as_buffer = &Buffer_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Memory of one column buffer of one batch (read-only, buffer protocol).",
};

/* -- growable memory, used with the GIL released ------------------------------------------- */

typedef struct {
    char *data;
    size_t len, cap;
} Mem;

/* Room for `more` bytes after m->len. A first reservation takes exactly what is asked (the
 * callers ask for the last batch's size and a little more), growth is by half: a power-of-two
 * rounding put 2.1-4 MB buffers above glibc's mmap threshold (membound sets 4 MiB), so every
 * batch's buffers were new mappings, faulted in page by page (2M rows of events from SQLite:
 * 74-85k page faults against ConnectorX's 13-14k). */
static int mem_reserve(Mem *m, size_t more) {
    size_t need = m->len + more;
    if (need <= m->cap) return 0;
    size_t cap = m->cap ? m->cap + m->cap / 2 : 0;
    if (cap < need) cap = need < 4096 ? 4096 : need;
    char *p = realloc(m->data, cap);
    if (p == NULL) return -1;
    m->data = p;
    m->cap = cap;
    return 0;
}

/* A Python object owning m's memory (m is left empty); NULL with an exception set. */
static PyObject *take(Mem *m) {
    Buffer *b = PyObject_New(Buffer, &BufferType);
    if (b == NULL) return NULL;
    b->data = m->data;
    b->size = (Py_ssize_t)m->len;
    m->data = NULL;
    m->len = m->cap = 0;
    return (PyObject *)b;
}

/* -- one column's buffers for the batch being filled --------------------------------------- */

typedef struct {
    Mem validity, values, offsets;
    size_t nulls;
    size_t hint; /* bytes of values in the last batch: the next one starts there */
} Out;

static void out_free(Out *o) {
    free(o->validity.data);
    free(o->values.data);
    free(o->offsets.data);
}

/* Ready for a batch of up to max_rows rows: room for the values the last batch had and an
 * eighth more (`first` bytes before any batch), at most `cap`; offsets when `variable`. */
static int out_begin(Out *o, size_t max_rows, size_t first, size_t cap, int variable) {
    o->nulls = 0;
    o->validity.len = o->values.len = o->offsets.len = 0;
    size_t want = o->hint ? o->hint + o->hint / 8 : first;
    if (want > cap) want = cap;
    if (mem_reserve(&o->values, want) || mem_reserve(&o->validity, max_rows / 8 + 1)) return -1;
    if (variable) {
        if (mem_reserve(&o->offsets, 4 * (max_rows + 1))) return -1;
        memset(o->offsets.data, 0, 4);
        o->offsets.len = 4;
    }
    return 0;
}

/* Row `row`'s validity bit (rows are appended in order from 0). */
static int out_valid(Out *o, size_t row, int valid) {
    if ((row & 7) == 0) {
        if (mem_reserve(&o->validity, 1)) return -1;
        o->validity.data[o->validity.len++] = 0;
    }
    if (valid) {
        o->validity.data[row >> 3] |= (char)(1 << (row & 7));
    } else {
        o->nulls++;
    }
    return 0;
}

/* A fixed-width value of `width` bytes (zeros for a NULL: pass v == NULL). */
static int out_fixed(Out *o, const void *v, size_t width) {
    if (mem_reserve(&o->values, width)) return -1;
    if (v != NULL) {
        memcpy(o->values.data + o->values.len, v, width);
    } else {
        memset(o->values.data + o->values.len, 0, width);
    }
    o->values.len += width;
    return 0;
}

/* Where the next variable-width value's n bytes go: NULL without memory (*too_big set when the
 * batch's values would pass 2 GiB). Finish it with out_bytes_done(o, n). */
static char *out_bytes_at(Out *o, size_t n, int *too_big) {
    *too_big = (long long)(o->values.len + n) > MEMBOUND_MAX_OFFSET;
    if (*too_big || mem_reserve(&o->values, n) || mem_reserve(&o->offsets, 4)) return NULL;
    return o->values.data + o->values.len;
}

static void out_bytes_done(Out *o, size_t n) {
    o->values.len += n;
    int32_t end = (int32_t)o->values.len;
    memcpy(o->offsets.data + o->offsets.len, &end, 4);
    o->offsets.len += 4;
}

/* The batch's buffers handed to Python: (validity or None, nulls, values, offsets or None). */
static PyObject *out_take(Out *o, int variable) {
    o->hint = o->values.len;
    PyObject *validity;
    if (o->nulls) {
        validity = take(&o->validity);
    } else {
        o->validity.len = 0;
        validity = Py_NewRef(Py_None);
    }
    PyObject *values = take(&o->values);
    PyObject *offsets = variable ? take(&o->offsets) : Py_NewRef(Py_None);
    PyObject *item = (validity && values && offsets)
                         ? Py_BuildValue("(OnOO)", validity, (Py_ssize_t)o->nulls, values, offsets)
                         : NULL;
    Py_XDECREF(validity);
    Py_XDECREF(values);
    Py_XDECREF(offsets);
    return item;
}

#endif
