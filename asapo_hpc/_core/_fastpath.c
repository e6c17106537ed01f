/*
 * asapo_hpc._core._fastpath: the per-message calls of Producer and Consumer without a
 * Python frame.
 *
 * A cffi call and the Python method around it cost ~0.7-1 us per small message; pyzmq's
 * Cython send costs less. These callables take the common call (`send(id, data)`,
 * `get_next(group)`, `acknowledge(group, msg)`) straight into the C core, and hand every
 * other call, unchanged, to the Python method they stand in for (`slow`), which keeps the
 * full behaviour: keywords, streams, datasets, disk groups, finish markers, prefetch
 * refills, errors. They read and update the same Python state (dicts and lists of the
 * Consumer) that the Python methods use, so either path may run at any call.
 *
 * Producer / Consumer install them per instance (`self.send = Send(...)`). Closing the
 * producer or consumer sets ctx->ring to NULL; the callables then hand every call to the
 * Python method, which raises.
 *
 * Also here: MessageCore, the base of Message (the descriptor as a C struct, its Python
 * tuple made on first use), and SegmentSlice, the descriptor behind Message.data and
 * Message.buffer.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>

#include "ahrpy_ctx.h"

#define NO_SEQ UINT64_MAX
/* Below this many bytes a send copies with the GIL held: releasing and taking it back
 * costs more than the copy. Larger sends, and every wait, let other threads run. */
#define GIL_COPY_MAX (64u << 10)

/* Attribute and method names, interned at import. */
static PyObject *str_group, *str_no_message, *str_finish, *str_flush_acks, *str_raise_ack,
    *str_warn_auto_ack, *str_acks_sent;

/* -- helpers ------------------------------------------------------------------------- */

/* The struct ahrpy_ctx behind `ctx`, a buffer of exactly its size (ffi.buffer of the
 * producer's or consumer's context, which keeps the cffi object, and so the memory,
 * alive as long as the callable holds it). NULL with TypeError for anything else. */
static struct ahrpy_ctx *ctx_of(PyObject *ctx)
{
    Py_buffer view;
    Py_ssize_t len = -1;
    void *p = NULL;
    if (PyObject_GetBuffer(ctx, &view, PyBUF_SIMPLE | PyBUF_WRITABLE) == 0) {
        p = view.buf;
        len = view.len;
        PyBuffer_Release(&view);
    }
    PyErr_Clear();
    if (len != (Py_ssize_t)sizeof(struct ahrpy_ctx)) {
        PyErr_SetString(PyExc_TypeError, "ctx must be ffi.buffer(<struct ahrpy_ctx *>)");
        return NULL;
    }
    return (struct ahrpy_ctx *)p;
}

/* The Python method this call falls back to, called with the same arguments. */
static PyObject *forward(PyObject *slow, PyObject *const *args, size_t nargsf,
                         PyObject *kwnames)
{
    return PyObject_Vectorcall(slow, args, nargsf, kwnames);
}

/* An exact int in 1 .. 2^63 - 1, else 0 (no error set). */
static uint64_t positive_id(PyObject *o)
{
    if (!PyLong_CheckExact(o))
        return 0;
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    return overflow || v <= 0 ? 0 : (uint64_t)v;
}

/* A callable made without __init__ has no context: say so instead of crashing. */
static int uninitialised(const struct ahrpy_ctx *ctx)
{
    if (ctx)
        return 0;
    PyErr_SetString(PyExc_TypeError, "fast-path callable used before __init__");
    return 1;
}

/* Call fn(a, b, ...) for its effect (the Python side raises or logs); NULL on error. */
static PyObject *call_method(PyObject *fn, PyObject *const *args, size_t n)
{
    return PyObject_Vectorcall(fn, args, n, NULL);
}

/* -- Send ---------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    struct ahrpy_ctx *ctx;
    PyObject *ctx_owner;      /* the buffer of *ctx, which keeps it alive */
    PyObject *stream_index;   /* dict: stream name -> index (the producer's cache) */
    PyObject *default_stream; /* str */
    PyObject *raise_send;     /* Producer._raise_send(rc, id, nbytes, stream) */
    PyObject *slow;           /* Producer.send, bound */
    uint64_t parallel_min;
} Send;

/* ahr_send without name or metadata, as ahrpy_send_bare; 0 or a negative errno. */
static int publish(const struct ahrpy_ctx *c, const void *data, uint64_t n, uint64_t id,
                   uint32_t stream)
{
    struct ahr_pub pub = {id, n, 0, stream, 0, 0, 0};
    int rc;
    if (n <= GIL_COPY_MAX) { /* a free slot: done without letting go of the GIL */
        rc = ahr_send(c->ring, c->member, data, &pub, NULL, 0, NULL, 0, 0, NULL);
        if (rc != -ENOSPC || c->timeout_ns == 0)
            return rc;
    }
    struct ahrpy_ctx at = *c; /* read with the GIL held */
    Py_BEGIN_ALLOW_THREADS /* a large copy, or a wait for room */
    rc = ahr_send(at.ring, at.member, data, &pub, NULL, 0, NULL, 0, at.timeout_ns, NULL);
    Py_END_ALLOW_THREADS
    return rc;
}

static PyObject *Send_call(PyObject *self_, PyObject *const *args, size_t nargsf,
                           PyObject *kwnames)
{
    Send *self = (Send *)self_;
    uint64_t id;
    if (uninitialised(self->ctx))
        return NULL;
    if (kwnames || PyVectorcall_NARGS(nargsf) != 2 || !self->ctx->ring ||
        !(id = positive_id(args[0])))
        return forward(self->slow, args, nargsf, kwnames);
    PyObject *idx = PyDict_GetItemWithError(self->stream_index, self->default_stream);
    if (!idx) { /* first send to the stream: the Python method registers it */
        if (PyErr_Occurred())
            return NULL;
        return forward(self->slow, args, nargsf, kwnames);
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE) < 0) { /* says what is wrong */
        PyErr_Clear();
        return forward(self->slow, args, nargsf, kwnames);
    }
    if ((uint64_t)view.len >= self->parallel_min) { /* a parallel copy: Python does it */
        PyBuffer_Release(&view);
        return forward(self->slow, args, nargsf, kwnames);
    }
    int rc = publish(self->ctx, view.buf, (uint64_t)view.len, id,
                     (uint32_t)PyLong_AsLong(idx));
    Py_ssize_t nbytes = view.len;
    PyBuffer_Release(&view);
    if (rc) {
        PyObject *a[4] = {PyLong_FromLong(rc), args[0], PyLong_FromSsize_t(nbytes),
                          self->default_stream};
        PyObject *r = a[0] && a[2] ? call_method(self->raise_send, a, 4) : NULL;
        Py_XDECREF(a[0]);
        Py_XDECREF(a[2]);
        Py_XDECREF(r);
        if (!PyErr_Occurred()) /* _raise_send always raises; be safe */
            PyErr_SetString(PyExc_RuntimeError, "send failed");
        return NULL;
    }
    return Py_NewRef(args[0]);
}

static int Send_init(PyObject *self_, PyObject *args, PyObject *kwds)
{
    Send *self = (Send *)self_;
    PyObject *ctx_owner, *stream_index, *default_stream, *raise_send, *slow;
    unsigned long long parallel_min;
    static char *kwlist[] = {"ctx", "stream_index", "default_stream", "raise_send", "slow",
                             "parallel_min", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO!UOOK", kwlist, &ctx_owner,
                                     &PyDict_Type, &stream_index, &default_stream, &raise_send,
                                     &slow, &parallel_min))
        return -1;
    struct ahrpy_ctx *ctx = ctx_of(ctx_owner);
    if (!ctx)
        return -1;
    Py_XSETREF(self->ctx_owner, Py_NewRef(ctx_owner));
    Py_XSETREF(self->stream_index, Py_NewRef(stream_index));
    Py_XSETREF(self->default_stream, Py_NewRef(default_stream));
    Py_XSETREF(self->raise_send, Py_NewRef(raise_send));
    Py_XSETREF(self->slow, Py_NewRef(slow));
    self->parallel_min = parallel_min;
    self->ctx = ctx; /* last: a callable with a context is complete */
    return 0;
}

static int Send_traverse(PyObject *self_, visitproc visit, void *arg)
{
    Send *self = (Send *)self_;
    Py_VISIT(self->ctx_owner);
    Py_VISIT(self->stream_index);
    Py_VISIT(self->raise_send);
    Py_VISIT(self->slow);
    return 0;
}

static int Send_clear(PyObject *self_)
{
    Send *self = (Send *)self_;
    Py_CLEAR(self->ctx_owner);
    Py_CLEAR(self->stream_index);
    Py_CLEAR(self->default_stream);
    Py_CLEAR(self->raise_send);
    Py_CLEAR(self->slow);
    return 0;
}

/* -- MessageCore ------------------------------------------------------------------- */

/* The base of Message: the descriptor as the C struct, and `_fields` (the 14-tuple the
 * Python properties read) made from it on first use. A message handed out by the fast
 * path never makes the tuple unless Python code asks for a field: data, buffer and
 * acknowledge read the struct. */
typedef struct {
    PyObject_HEAD
    PyObject *fields; /* the tuple, or NULL until asked for */
    struct ahr_msg desc;
} MessageCore;

static PyTypeObject MessageCoreType;

/* The descriptor as the 14-tuple Message._fields holds (struct ahr_msg's field order). */
static PyObject *fields_of(const struct ahr_msg *m)
{
    PyObject *t = PyTuple_New(14);
    if (!t)
        return NULL;
    const uint64_t wide[6] = {m->seq, m->id, m->data_offset, m->data_len, m->name_offset,
                              m->timestamp_ns};
    const uint32_t narrow[8] = {m->name_len, m->meta_len, m->stream, m->flags,
                                m->ds_substream, m->ds_size, m->attempts, m->span};
    for (int i = 0; i < 6; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(wide[i]);
        if (!v)
            goto fail;
        PyTuple_SET_ITEM(t, i, v);
    }
    for (int i = 0; i < 8; i++) {
        PyObject *v = PyLong_FromUnsignedLong(narrow[i]);
        if (!v)
            goto fail;
        PyTuple_SET_ITEM(t, 6 + i, v);
    }
    return t;
fail:
    Py_DECREF(t);
    return NULL;
}

static PyObject *MessageCore_get_fields(PyObject *self_, void *closure)
{
    MessageCore *self = (MessageCore *)self_;
    (void)closure;
    if (!self->fields && !(self->fields = fields_of(&self->desc)))
        return NULL;
    return Py_NewRef(self->fields);
}

/* msg._fields = (seq, id, data_offset, ...): 14 non-negative ints (copies, disk reads). */
static int MessageCore_set_fields(PyObject *self_, PyObject *value, void *closure)
{
    MessageCore *self = (MessageCore *)self_;
    (void)closure;
    if (!value) {
        PyErr_SetString(PyExc_AttributeError, "_fields cannot be deleted");
        return -1;
    }
    PyObject *t = PySequence_Tuple(value);
    if (!t)
        return -1;
    if (PyTuple_GET_SIZE(t) != 14) {
        Py_DECREF(t);
        PyErr_SetString(PyExc_ValueError, "_fields takes the 14 fields of struct ahr_msg");
        return -1;
    }
    uint64_t v[14];
    for (int i = 0; i < 14; i++) {
        v[i] = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(t, i));
        if (PyErr_Occurred() || (i >= 6 && v[i] > UINT32_MAX)) {
            Py_DECREF(t);
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_OverflowError, "a 32-bit field of _fields is too large");
            return -1;
        }
    }
    self->desc = (struct ahr_msg){v[0], v[1], v[2], v[3], v[4], v[5],
                                  (uint32_t)v[6], (uint32_t)v[7], (uint32_t)v[8],
                                  (uint32_t)v[9], (uint32_t)v[10], (uint32_t)v[11],
                                  (uint32_t)v[12], (uint32_t)v[13]};
    Py_XSETREF(self->fields, t);
    return 0;
}

static int MessageCore_traverse(PyObject *self, visitproc visit, void *arg)
{
    Py_VISIT(((MessageCore *)self)->fields);
    return 0;
}

static int MessageCore_clear(PyObject *self)
{
    Py_CLEAR(((MessageCore *)self)->fields);
    return 0;
}

static void MessageCore_dealloc(PyObject *self)
{
    PyObject_GC_UnTrack(self);
    MessageCore_clear(self);
    Py_TYPE(self)->tp_free(self);
}

static PyGetSetDef MessageCore_getset[] = {
    {"_fields", MessageCore_get_fields, MessageCore_set_fields,
     "(seq, id, data_offset, data_len, name_offset, timestamp_ns, name_len, meta_len, "
     "stream, flags, ds_substream, ds_size, attempts, span)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject MessageCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "asapo_hpc._core._fastpath.MessageCore",
    .tp_doc = "The base of Message: the descriptor as a C struct; _fields made on first use.",
    .tp_basicsize = sizeof(MessageCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_dealloc = MessageCore_dealloc,
    .tp_traverse = MessageCore_traverse,
    .tp_clear = MessageCore_clear,
    .tp_getset = MessageCore_getset,
};

/* -- Consumer state shared by GetNext and Acknowledge ---------------------------------- */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    struct ahrpy_ctx *ctx;
    PyObject *ctx_owner;
    PyObject *all_streams;    /* group id -> handle, groups following every stream */
    PyObject *held_markers;   /* handle -> finish marker told last (non-empty: slow path) */
    PyObject *pending_finish; /* handle -> markers a batch held back (non-empty: slow) */
    PyObject *queued;         /* handle -> prefetched descriptors, newest first */
    PyObject *acks;           /* handle -> acknowledged seqs not yet sent */
    PyObject *held;           /* handle -> seq of the last auto_ack message */
    PyObject *held_batch;     /* handle -> last auto_ack batch (non-empty: slow path) */
    PyObject *msg_class;      /* handle -> Message subclass of the group */
    PyObject *message_type;   /* Message */
    PyObject *owner;          /* the Consumer: its methods for the rare cases */
    PyObject *slow;           /* the bound Python method */
    struct ahr_msg *batch;    /* prefetch descriptors, for a refill */
    uint64_t *seqs;           /* prefetch sequences, for sending gathered acknowledgements */
    uint32_t prefetch;
    uint32_t disk_group;
    int auto_ack;
} Member;

/* owner.<name>(*args): the Consumer's own method, for what C leaves to it. */
static PyObject *call_owner(Member *self, PyObject *name, PyObject *const *args, size_t n)
{
    PyObject *with_self[4] = {self->owner};
    for (size_t i = 0; i < n && i < 3; i++)
        with_self[i + 1] = args[i];
    return PyObject_VectorcallMethod(name, with_self, n + 1, NULL);
}

/* A C call failed with negative errno `rc`: owner.<name>(rc, a1, a2) turns it into the
 * Python exception (Consumer._no_message, Consumer._raise_ack), which stays set. */
static void raise_from_owner(Member *self, PyObject *name, int rc, PyObject *a1, PyObject *a2)
{
    PyObject *a[3] = {PyLong_FromLong(rc), a1, a2};
    PyObject *r = a[0] ? call_owner(self, name, a, 3) : NULL;
    Py_XDECREF(a[0]);
    Py_XDECREF(r);
    if (!PyErr_Occurred()) /* those methods always raise; be safe */
        PyErr_SetString(PyExc_RuntimeError, "ring call failed");
}

static int Member_init(PyObject *self_, PyObject *args, PyObject *kwds)
{
    Member *self = (Member *)self_;
    PyObject *ctx_owner, *all_streams, *held_markers, *pending_finish, *queued,
        *acks, *held, *held_batch, *msg_class, *message_type, *owner, *slow;
    unsigned int prefetch, disk_group;
    int auto_ack;
    static char *kwlist[] = {"ctx", "all_streams", "held_markers",
                             "pending_finish", "queued", "acks", "held", "held_batch",
                             "msg_class", "message_type", "owner", "slow",
                             "prefetch", "disk_group", "auto_ack", NULL};
    if (!PyArg_ParseTupleAndKeywords(
            args, kwds, "OO!O!O!O!O!O!O!O!O!OOIIp", kwlist, &ctx_owner,
            &PyDict_Type, &all_streams, &PyDict_Type, &held_markers, &PyDict_Type,
            &pending_finish, &PyDict_Type, &queued, &PyDict_Type, &acks, &PyDict_Type, &held,
            &PyDict_Type, &held_batch, &PyDict_Type, &msg_class, &PyType_Type, &message_type,
            &owner, &slow, &prefetch, &disk_group, &auto_ack))
        return -1;
    struct ahrpy_ctx *ctx = ctx_of(ctx_owner);
    if (!ctx)
        return -1;
    if (!PyType_IsSubtype((PyTypeObject *)message_type, &MessageCoreType)) {
        PyErr_SetString(PyExc_TypeError, "message_type must derive from MessageCore");
        return -1;
    }
    PyObject **refs[] = {&self->ctx_owner, &self->all_streams, &self->held_markers,
                         &self->pending_finish, &self->queued, &self->acks, &self->held,
                         &self->held_batch, &self->msg_class, &self->message_type,
                         &self->owner, &self->slow};
    PyObject *vals[] = {ctx_owner, all_streams, held_markers, pending_finish, queued, acks,
                        held, held_batch, msg_class, message_type, owner, slow};
    for (size_t i = 0; i < sizeof refs / sizeof refs[0]; i++)
        Py_XSETREF(*refs[i], Py_NewRef(vals[i]));
    if (prefetch > 1 && !self->batch &&
        (!(self->batch = PyMem_Calloc(prefetch, sizeof(struct ahr_msg))) ||
         !(self->seqs = PyMem_Calloc(prefetch, sizeof(uint64_t))))) {
        PyErr_NoMemory();
        return -1;
    }
    self->prefetch = prefetch;
    self->disk_group = disk_group;
    self->auto_ack = auto_ack;
    self->ctx = ctx; /* last: a callable with a context is complete */
    return 0;
}

static int Member_traverse(PyObject *self_, visitproc visit, void *arg)
{
    Member *self = (Member *)self_;
    Py_VISIT(self->ctx_owner);
    Py_VISIT(self->all_streams);
    Py_VISIT(self->held_markers);
    Py_VISIT(self->pending_finish);
    Py_VISIT(self->queued);
    Py_VISIT(self->acks);
    Py_VISIT(self->held);
    Py_VISIT(self->held_batch);
    Py_VISIT(self->msg_class);
    Py_VISIT(self->message_type);
    Py_VISIT(self->owner);
    Py_VISIT(self->slow);
    return 0;
}

static int Member_clear(PyObject *self_)
{
    Member *self = (Member *)self_;
    Py_CLEAR(self->ctx_owner);
    Py_CLEAR(self->all_streams);
    Py_CLEAR(self->held_markers);
    Py_CLEAR(self->pending_finish);
    Py_CLEAR(self->queued);
    Py_CLEAR(self->acks);
    Py_CLEAR(self->held);
    Py_CLEAR(self->held_batch);
    Py_CLEAR(self->msg_class);
    Py_CLEAR(self->message_type);
    Py_CLEAR(self->owner);
    Py_CLEAR(self->slow);
    return 0;
}

/* A Message of the group's class holding a copy of descriptor `m` (no tuple made). */
static PyObject *new_message(Member *self, PyObject *handle, const struct ahr_msg *m)
{
    PyObject *cls = PyDict_GetItemWithError(self->msg_class, handle);
    if (!cls || !PyType_Check(cls) || !PyType_IsSubtype((PyTypeObject *)cls, &MessageCoreType)) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_RuntimeError, "no Message class for the group");
        return NULL;
    }
    PyTypeObject *type = (PyTypeObject *)cls;
    PyObject *msg = type->tp_alloc(type, 0);
    if (msg)
        ((MessageCore *)msg)->desc = *m;
    return msg;
}

/* Does the group need the Python method (finish markers pending, a batch held)? */
static int needs_python(Member *self)
{
    return PyDict_GET_SIZE(self->held_markers) || PyDict_GET_SIZE(self->pending_finish) ||
           PyDict_GET_SIZE(self->held_batch);
}

/* -- GetNext ------------------------------------------------------------------------- */

/* Does the group's prefetch queue still hold descriptors? */
static int queued_left(Member *self, PyObject *handle)
{
    PyObject *queue = PyDict_GetItemWithError(self->queued, handle);
    return queue && PyList_Check(queue) && PyList_GET_SIZE(queue) > 0;
}

/* prefetch > 1: the oldest claimed message of the group, or NULL (no error) when the
 * queue is empty or holds a finish marker next: the Python method tells it. */
static PyObject *next_queued(Member *self, PyObject *handle)
{
    PyObject *queue = PyDict_GetItemWithError(self->queued, handle);
    if (!queue || !PyList_CheckExact(queue) || PyList_GET_SIZE(queue) == 0)
        return NULL;
    Py_ssize_t last = PyList_GET_SIZE(queue) - 1;
    PyObject *msg = PyList_GET_ITEM(queue, last);
    if (!PyObject_TypeCheck(msg, &MessageCoreType) ||
        (((MessageCore *)msg)->desc.flags & AHR_FLAG_FINISH))
        return NULL;
    Py_INCREF(msg);
    if (PyList_SetSlice(queue, last, last + 1, NULL) < 0) {
        Py_DECREF(msg);
        return NULL;
    }
    return msg;
}

/* Send the acknowledgements gathered for the group in one call (Consumer._flush_acks's
 * work); Consumer._acks_sent says what the result means. 0, or -1 with an error set. */
static int flush_acks(Member *self, PyObject *handle, PyObject *acks)
{
    Py_ssize_t n = PyList_GET_SIZE(acks);
    if (n == 0)
        return 0;
    if ((uint64_t)n > self->prefetch || !self->seqs) { /* more than C has room for */
        PyObject *r = call_owner(self, str_flush_acks, &handle, 1);
        Py_XDECREF(r);
        return r ? 0 : -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        self->seqs[i] = PyLong_AsUnsignedLongLong(PyList_GET_ITEM(acks, i));
        if (PyErr_Occurred())
            return -1;
    }
    if (PyList_SetSlice(acks, 0, n, NULL) < 0)
        return -1;
    int done = ahr_ack_batch(self->ctx->ring, (uint32_t)PyLong_AsUnsignedLong(handle),
                             self->ctx->member, self->seqs, (uint32_t)n);
    if (done == n)
        return 0;
    PyObject *a[2] = {PyLong_FromLong(done), PyLong_FromSsize_t(n)};
    PyObject *r = a[0] && a[1] ? call_owner(self, str_acks_sent, a, 2) : NULL;
    Py_XDECREF(a[0]);
    Py_XDECREF(a[1]);
    Py_XDECREF(r);
    return r ? 0 : -1;
}

/* prefetch > 1 and nothing claimed is left: claim up to `prefetch` messages in one call
 * (Consumer._refill's work; the acknowledgements gathered go first). 0, or -1 with the
 * Python error set (AsapoEndOfStreamError and the like, from Consumer._no_message). */
static int refill(Member *self, PyObject *handle, PyObject *group_id)
{
    PyObject *acks = PyDict_GetItemWithError(self->acks, handle);
    if (!acks && PyErr_Occurred())
        return -1;
    if (acks && PyList_Check(acks) && flush_acks(self, handle, acks) < 0)
        return -1;
    uint32_t group = (uint32_t)PyLong_AsUnsignedLong(handle);
    struct ahrpy_ctx at = *self->ctx;
    struct ahr_msg *batch = self->batch;
    uint32_t n = self->prefetch;
    int got;
    Py_BEGIN_ALLOW_THREADS /* it may wait for the first message */
    got = ahr_get_next_batch(at.ring, group, at.member, n, at.timeout_ns, batch);
    Py_END_ALLOW_THREADS
    if (got < 0) {
        raise_from_owner(self, str_no_message, got, group_id, Py_None);
        return -1;
    }
    PyObject *queue = PyList_New(got); /* newest first: the oldest is popped from the end */
    if (!queue)
        return -1;
    for (int i = 0; i < got; i++) {
        PyObject *msg = new_message(self, handle, &batch[i]);
        if (!msg) {
            Py_DECREF(queue);
            return -1;
        }
        PyList_SET_ITEM(queue, got - 1 - i, msg);
    }
    int rc = PyDict_SetItem(self->queued, handle, queue);
    Py_DECREF(queue);
    return rc;
}

/* prefetch = 1: acknowledge `prev` (auto_ack) and claim the next message, as ahrpy_next. */
static int claim_one(Member *self, uint32_t group, uint64_t prev, struct ahr_msg *out)
{
    struct ahrpy_ctx *c = self->ctx;
    int ack = prev == NO_SEQ ? 0 : ahr_ack(c->ring, group, c->member, prev);
    int rc;
    struct ahrpy_ctx at = *c; /* read with the GIL held */
    Py_BEGIN_ALLOW_THREADS /* it may wait: other threads run meanwhile */
    rc = ahr_get_next(at.ring, group, at.member, at.timeout_ns, out);
    Py_END_ALLOW_THREADS
    return rc == 0 && ack ? 1 : rc;
}

static PyObject *GetNext_one(Member *self, PyObject *handle, PyObject *group_id)
{
    uint64_t prev = NO_SEQ;
    PyObject *prev_obj = NULL;
    if (self->auto_ack) { /* take what this member holds: acknowledged in the same call */
        prev_obj = PyDict_GetItemWithError(self->held, handle);
        if (prev_obj) {
            Py_INCREF(prev_obj);
            prev = PyLong_AsUnsignedLongLong(prev_obj);
            if (PyDict_DelItem(self->held, handle) < 0 || PyErr_Occurred())
                goto fail;
        } else if (PyErr_Occurred()) {
            return NULL;
        }
    }
    struct ahr_msg m;
    int rc = claim_one(self, (uint32_t)PyLong_AsUnsignedLong(handle), prev, &m);
    if (rc < 0) {
        raise_from_owner(self, str_no_message, rc, group_id, Py_None);
        goto fail;
    }
    if (rc == 1) { /* the message came; the previous one's lease had expired */
        PyObject *r = call_owner(self, str_warn_auto_ack, &prev_obj, 1);
        if (!r)
            goto fail;
        Py_DECREF(r);
    }
    Py_XDECREF(prev_obj);
    PyObject *msg = new_message(self, handle, &m);
    if (!msg)
        return NULL;
    if (m.flags & AHR_FLAG_FINISH) { /* told as AsapoStreamFinishedError */
        PyObject *a[3] = {msg, group_id, Py_None};
        PyObject *r = call_owner(self, str_finish, a, 3);
        Py_XDECREF(r);
        Py_DECREF(msg);
        return NULL;
    }
    if (self->auto_ack) { /* acknowledged when this member asks the group again */
        PyObject *s = PyLong_FromUnsignedLongLong(m.seq);
        if (!s || PyDict_SetItem(self->held, handle, s) < 0) {
            Py_XDECREF(s);
            Py_DECREF(msg);
            return NULL;
        }
        Py_DECREF(s);
    }
    return msg;
fail:
    Py_XDECREF(prev_obj);
    return NULL;
}

static PyObject *GetNext_call(PyObject *self_, PyObject *const *args, size_t nargsf,
                              PyObject *kwnames)
{
    Member *self = (Member *)self_;
    if (uninitialised(self->ctx))
        return NULL;
    if (kwnames || PyVectorcall_NARGS(nargsf) != 1 || !self->ctx->ring || needs_python(self))
        return forward(self->slow, args, nargsf, kwnames);
    PyObject *handle = PyDict_GetItemWithError(self->all_streams, args[0]);
    if (!handle) { /* a new group, or a name that is not a str: the Python method */
        if (PyErr_Occurred())
            return NULL;
        return forward(self->slow, args, nargsf, kwnames);
    }
    if (self->prefetch <= 1)
        return GetNext_one(self, handle, args[0]);
    if (self->auto_ack)
        return forward(self->slow, args, nargsf, kwnames);
    PyObject *msg = next_queued(self, handle);
    if (!msg && !PyErr_Occurred() && !queued_left(self, handle)) {
        if (refill(self, handle, args[0]) < 0)
            return NULL;
        msg = next_queued(self, handle);
    }
    if (!msg) { /* a finish marker is next: the Python method tells it */
        if (PyErr_Occurred())
            return NULL;
        return forward(self->slow, args, nargsf, kwnames);
    }
    return msg;
}

/* -- Acknowledge --------------------------------------------------------------------- */

static PyObject *Acknowledge_call(PyObject *self_, PyObject *const *args, size_t nargsf,
                                  PyObject *kwnames)
{
    Member *self = (Member *)self_;
    if (uninitialised(self->ctx))
        return NULL;
    if (kwnames || PyVectorcall_NARGS(nargsf) != 2 || !self->ctx->ring ||
        PyDict_GET_SIZE(self->held) ||
        !PyObject_TypeCheck(args[1], (PyTypeObject *)self->message_type))
        return forward(self->slow, args, nargsf, kwnames);
    PyObject *msg = args[1]; /* a Message, so a MessageCore */
    PyObject *handle = PyObject_GetAttr(msg, str_group); /* the class's, or a copy's slot */
    if (!handle)
        return NULL;
    PyObject *result = NULL, *seq = NULL;
    unsigned long group = PyLong_AsUnsignedLong(handle);
    if (PyErr_Occurred() || group == self->disk_group) {
        PyErr_Clear();
        result = forward(self->slow, args, nargsf, kwnames);
        goto done;
    }
    uint64_t s = ((MessageCore *)msg)->desc.seq;
    if (!(seq = PyLong_FromUnsignedLongLong(s)))
        goto done;
    if (self->prefetch > 1) { /* gathered; sent together (flush_acks) */
        PyObject *acks = PyDict_GetItemWithError(self->acks, handle);
        if (!acks || !PyList_CheckExact(acks)) {
            result = PyErr_Occurred() ? NULL : forward(self->slow, args, nargsf, kwnames);
            goto done;
        }
        if (PyList_Append(acks, seq) < 0)
            goto done;
        if ((uint64_t)PyList_GET_SIZE(acks) >= self->prefetch || !queued_left(self, handle)) {
            if (PyErr_Occurred() || flush_acks(self, handle, acks) < 0)
                goto done;
        }
        result = Py_NewRef(Py_None);
        goto done;
    }
    int rc = ahr_ack(self->ctx->ring, (uint32_t)group, self->ctx->member, s);
    if (rc) {
        raise_from_owner(self, str_raise_ack, rc, seq, msg);
        goto done;
    }
    result = Py_NewRef(Py_None);
done:
    Py_DECREF(handle);
    Py_XDECREF(seq);
    return result;
}

/* -- SegmentSlice ------------------------------------------------------------------ */

/* A descriptor on a group's Message class: msg.<name> is base[start:start + length], with
 * start and length from the message's descriptor (data_offset, data_len): the
 * Message.data and Message.buffer views without a Python frame. */
typedef struct {
    PyObject_HEAD
    PyObject *base; /* the consumer's numpy view or memoryview of the segment */
} SegmentSlice;

static PyObject *SegmentSlice_get(PyObject *self_, PyObject *msg, PyObject *type)
{
    SegmentSlice *self = (SegmentSlice *)self_;
    (void)type;
    if (!msg || !self->base) /* looked up on the class: the descriptor itself */
        return Py_NewRef(self_);
    if (!PyObject_TypeCheck(msg, &MessageCoreType)) {
        PyErr_SetString(PyExc_TypeError, "SegmentSlice serves MessageCore instances only");
        return NULL;
    }
    const struct ahr_msg *d = &((MessageCore *)msg)->desc;
    PyObject *start = PyLong_FromUnsignedLongLong(d->data_offset);
    PyObject *stop = PyLong_FromUnsignedLongLong(d->data_offset + d->data_len);
    PyObject *slice = start && stop ? PySlice_New(start, stop, NULL) : NULL;
    PyObject *out = slice ? PyObject_GetItem(self->base, slice) : NULL;
    Py_XDECREF(slice);
    Py_XDECREF(stop);
    Py_XDECREF(start);
    return out;
}

static int SegmentSlice_init(PyObject *self_, PyObject *args, PyObject *kwds)
{
    SegmentSlice *self = (SegmentSlice *)self_;
    PyObject *base;
    static char *kwlist[] = {"base", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O", kwlist, &base))
        return -1;
    Py_XSETREF(self->base, Py_NewRef(base));
    return 0;
}

static int SegmentSlice_traverse(PyObject *self_, visitproc visit, void *arg)
{
    SegmentSlice *self = (SegmentSlice *)self_;
    Py_VISIT(self->base);
    return 0;
}

static int SegmentSlice_clear(PyObject *self_)
{
    SegmentSlice *self = (SegmentSlice *)self_;
    Py_CLEAR(self->base);
    return 0;
}

static void SegmentSlice_dealloc(PyObject *self)
{
    PyObject_GC_UnTrack(self);
    SegmentSlice_clear(self);
    Py_TYPE(self)->tp_free(self);
}

static PyTypeObject SegmentSliceType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "asapo_hpc._core._fastpath.SegmentSlice",
    .tp_doc = "SegmentSlice(base): msg.attr is base[data_offset:data_offset + data_len] of a "
              "MessageCore, a view (no copy).",
    .tp_basicsize = sizeof(SegmentSlice),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = SegmentSlice_init,
    .tp_dealloc = SegmentSlice_dealloc,
    .tp_traverse = SegmentSlice_traverse,
    .tp_clear = SegmentSlice_clear,
    .tp_descr_get = SegmentSlice_get,
};

/* -- types and module ---------------------------------------------------------------- */

static PyObject *with_call(PyTypeObject *type, vectorcallfunc call)
{
    PyObject *self = type->tp_alloc(type, 0);
    if (self) /* the vectorcall slot sits right after the header in Send and Member */
        ((Send *)self)->vectorcall = call;
    return self;
}

static PyObject *GetNext_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    (void)args, (void)kwds;
    return with_call(type, GetNext_call);
}

static PyObject *Acknowledge_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    (void)args, (void)kwds;
    return with_call(type, Acknowledge_call);
}

static PyObject *Send_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    (void)args, (void)kwds;
    return with_call(type, Send_call);
}

static void Send_dealloc(PyObject *self)
{
    PyObject_GC_UnTrack(self);
    Send_clear(self);
    Py_TYPE(self)->tp_free(self);
}

static void Member_dealloc(PyObject *self)
{
    PyObject_GC_UnTrack(self);
    Member_clear(self);
    PyMem_Free(((Member *)self)->batch);
    PyMem_Free(((Member *)self)->seqs);
    Py_TYPE(self)->tp_free(self);
}

#define CALLABLE_FLAGS (Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL)

static PyTypeObject SendType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "asapo_hpc._core._fastpath.Send",
    .tp_doc = "Producer.send(id, data) straight into the ring; other calls go to `slow`.",
    .tp_basicsize = sizeof(Send),
    .tp_flags = CALLABLE_FLAGS,
    .tp_new = Send_new,
    .tp_init = Send_init,
    .tp_dealloc = Send_dealloc,
    .tp_traverse = Send_traverse,
    .tp_clear = Send_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(Send, vectorcall),
};

/* GetNext and Acknowledge: the same object layout and state, another call. */
static PyTypeObject member_type(const char *name, const char *doc, newfunc new_)
{
    PyTypeObject type = {
        PyVarObject_HEAD_INIT(NULL, 0)
        .tp_name = name,
        .tp_doc = doc,
        .tp_basicsize = sizeof(Member),
        .tp_flags = CALLABLE_FLAGS,
        .tp_new = new_,
        .tp_init = Member_init,
        .tp_dealloc = Member_dealloc,
        .tp_traverse = Member_traverse,
        .tp_clear = Member_clear,
        .tp_call = PyVectorcall_Call,
        .tp_vectorcall_offset = offsetof(Member, vectorcall),
    };
    return type;
}

static PyTypeObject GetNextType, AcknowledgeType; /* filled by member_type at import */

static struct PyModuleDef fastpath_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "asapo_hpc._core._fastpath",
    .m_doc = "Producer.send, Consumer.get_next and Consumer.acknowledge without a Python "
             "frame for their common calls.",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__fastpath(void)
{
    GetNextType = member_type("asapo_hpc._core._fastpath.GetNext",
                              "Consumer.get_next(group) from the prefetched queue or one C "
                              "claim; other calls go to `slow`.", GetNext_new);
    AcknowledgeType = member_type("asapo_hpc._core._fastpath.Acknowledge",
                                  "Consumer.acknowledge(group, message) gathered or sent to "
                                  "C; other calls go to `slow`.", Acknowledge_new);
    PyTypeObject *types[] = {&SendType, &GetNextType, &AcknowledgeType, &SegmentSliceType,
                             &MessageCoreType};
    const char *names[] = {"Send", "GetNext", "Acknowledge", "SegmentSlice", "MessageCore"};
    for (int i = 0; i < 5; i++)
        if (PyType_Ready(types[i]) < 0)
            return NULL;
    struct {
        PyObject **var;
        const char *text;
    } names_[] = {{&str_group, "_group"}, {&str_no_message, "_no_message"},
                  {&str_finish, "_finish"}, {&str_flush_acks, "_flush_acks"},
                  {&str_raise_ack, "_raise_ack"}, {&str_warn_auto_ack, "_warn_auto_ack"},
                  {&str_acks_sent, "_acks_sent"}};
    for (size_t i = 0; i < sizeof names_ / sizeof names_[0]; i++)
        if (!(*names_[i].var = PyUnicode_InternFromString(names_[i].text)))
            return NULL;
    PyObject *m = PyModule_Create(&fastpath_module);
    if (!m)
        return NULL;
    for (int i = 0; i < 5; i++)
        if (PyModule_AddObjectRef(m, names[i], (PyObject *)types[i]) < 0) {
            Py_DECREF(m);
            return NULL;
        }
    return m;
}
