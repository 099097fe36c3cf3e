/*
 * Column buffers shared by membound's C readers (_mysqlarrow.c, _sqlitearrow.c), each of which
 * includes this file once: growable memory filled with the GIL released, and the Python object
 * that owns such memory once a batch is handed over (buffer protocol, for pa.py_buffer: Arrow
 * adopts it without a copy).
 */
#ifndef MEMBOUND_ARROWBUF_H
#define MEMBOUND_ARROWBUF_H

#include <Python.h>
#include <stdlib.h>

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

#endif
