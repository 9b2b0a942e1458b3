/*
 * The forwarder's compiled fast path: the common frame moves without running
 * Python bytecode.
 *
 * Why: on a light load every frame is one wake-up of the forwarder, and the
 * interpreter's cost per wake-up (~40 us here) is what a ping pays per overlay
 * hop. Called straight from the event loop (uvloop's reader callbacks on guest
 * fds and on fast TCP links; BufferedProtocol calls on a link before it is
 * fast), this code reads a frame, looks its (dst, src) up in the forwarder's
 * own route cache, counts it into the forwarder's own Python counters and
 * writes it out.
 *
 * What it does not decide, it hands back: Python (core.py, daemon.py) stays
 * the definition of forwarding. A frame goes fast only when the answer is
 * already cached and plain (one live port, not the sender's, not its segment,
 * a pair already counted once); anything else -- broadcast, a cache miss, a
 * new pair, a runt, a full socket, an error -- goes to the Python path with the
 * rest of its batch, so order within a batch is kept.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define VNET_HDR_LEN 10
#define KEY_OFF VNET_HDR_LEN /* dst MAC, then src MAC: the 12-byte key */
#define KEY_LEN 12
#define MSG_FRAME 6

static PyObject *str_frames_in, *str_tx_frames, *str_tx_bytes, *str_rx_frames,
    *str_rx_bytes, *str_last_rx, *str_clock, *str_get_write_buffer_size, *str_write,
    *str_deliver, *str_bad_stream, *str_read_in_transport;

typedef struct Switch_s Switch;

/* ------------------------------------------------------------ StreamBase */

/* (Its methods are below; the layout is here, for the link sinks.)
 *
 * The receive half of a link connection (an asyncio BufferedProtocol): bytes
 * land in one preallocated buffer and are split into [length][type][body]
 * messages. FRAMEs the switch can carry go at once while fast_port >= 0 (the
 * link is bound and up); from the first message it cannot, the rest go to
 * self._deliver(list[(type, bytes)]). A malformed stream goes to
 * self._bad_stream(reason, detail). The subclass (links.py) is the rest. */
typedef struct {
    PyObject_HEAD
    PyObject *dict;
    char *buf;
    Py_ssize_t size, chunk, start, end;
    Py_ssize_t max_message, max_control;
    unsigned char known[32]; /* message types, as a bit set */
    Switch *sw;
    Py_ssize_t fast_port;
    PyObject *fast_stats; /* the link's stats: rx_frames, rx_bytes, last_rx */
    PyObject *clock_owner; /* whose _clock stamps last_rx */
    int read_fd; /* >= 0: readable() reads the socket here, not the transport */
    int queued; /* bytes were handed to the transport: ask it before writing around it */
} StreamBase;

/* ------------------------------------------------------------------ Sink */

/* Where a port's frames go: a guest's fd (AF_PACKET or TAP), or a plain TCP
 * link: its connection (whose read_fd, the connection's own duplicate of the
 * socket, is written to while it is set), its transport (for what the kernel
 * does not take at once) and its stats object (tx_frames, tx_bytes).
 *
 * A link is written around its transport only while the transport holds no
 * bytes: whoever hands it bytes sets conn.queued, and only then is the
 * transport asked (one call) whether they are gone. Writing to the
 * connection's own fd, never the transport's, means a transport that closes
 * on its own cannot leave a number the kernel gives to another socket. */
typedef struct {
    PyObject_HEAD
    int fd;
    PyObject *stats;     /* None for a guest */
    StreamBase *conn;    /* NULL for a guest */
    PyObject *buffered, *write; /* the transport's bound methods */
} Sink;

static PyTypeObject StreamBaseType;

static int Sink_init(Sink *self, PyObject *args, PyObject *kw)
{
    static char *names[] = {"fd", "transport", "stats", "conn", NULL};
    PyObject *transport = Py_None, *stats = Py_None, *conn = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "i|OOO", names, &self->fd, &transport, &stats,
                                     &conn))
        return -1;
    if ((transport == Py_None) != (conn == Py_None) ||
        (conn != Py_None && !PyObject_TypeCheck(conn, &StreamBaseType))) {
        PyErr_SetString(PyExc_TypeError, "a link sink needs a transport and its StreamBase conn");
        return -1;
    }
    Py_INCREF(stats);
    Py_XSETREF(self->stats, stats);
    Py_XINCREF(conn == Py_None ? NULL : conn);
    Py_XSETREF(self->conn, conn == Py_None ? NULL : (StreamBase *)conn);
    if (transport != Py_None) {
        Py_XSETREF(self->buffered, PyObject_GetAttr(transport, str_get_write_buffer_size));
        Py_XSETREF(self->write, PyObject_GetAttr(transport, str_write));
        if (!self->buffered || !self->write)
            return -1;
    }
    return 0;
}

static void Sink_dealloc(Sink *self)
{
    Py_XDECREF(self->stats);
    Py_XDECREF(self->conn);
    Py_XDECREF(self->buffered);
    Py_XDECREF(self->write);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef Sink_members[] = {
    {"fd", T_INT, offsetof(Sink, fd), READONLY, "a guest's fd frames are written to"},
    {NULL},
};

static PyTypeObject SinkType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "services.forwarder._fastpath.Sink",
    .tp_basicsize = sizeof(Sink),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Sink(fd) for a guest, Sink(-1, transport, stats, conn) for a link.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Sink_init,
    .tp_dealloc = (destructor)Sink_dealloc,
    .tp_members = Sink_members,
};

/* ---------------------------------------------------------------- Switch */

/* The forwarder's tables as the fast path sees them; the daemon re-syncs it
 * whenever ports, rules, senders or captures change. cache, pairs and
 * counters are the very objects core.py uses. */
struct Switch_s {
    PyObject_HEAD
    PyObject *cache;    /* dict: key12 -> port (int); core's route cache */
    PyObject *pairs;    /* dict: key12 -> [frames, bytes, ...]; PairCounter.pairs */
    PyObject *counters; /* dict: core's counters */
    PyObject *sinks;    /* tuple: port -> Sink or None */
    PyObject *ports;    /* bytes: port -> flags */
    Py_ssize_t max_vframe, max_gso_vframe;
    int enabled;
    unsigned long long fast_frames; /* frames the fast path carried (tests) */
};

#define PORT_IN 1       /* frames from this port may go fast (it is up) */
#define PORT_COUNTED 2  /* frames from this port are counted per pair */
#define PORT_SEGMENT 0xF0 /* a small segment id: 0 none */

static int Switch_init(Switch *self, PyObject *args, PyObject *kw)
{
    self->cache = PyDict_New();
    self->pairs = PyDict_New();
    self->counters = PyDict_New();
    self->sinks = PyTuple_New(0);
    self->ports = PyBytes_FromStringAndSize("", 0);
    self->max_vframe = 0;
    self->max_gso_vframe = 0;
    self->enabled = 0;
    return (self->cache && self->pairs && self->counters && self->sinks && self->ports) ? 0 : -1;
}

static void Switch_dealloc(Switch *self)
{
    Py_XDECREF(self->cache);
    Py_XDECREF(self->pairs);
    Py_XDECREF(self->counters);
    Py_XDECREF(self->sinks);
    Py_XDECREF(self->ports);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Switch_configure(Switch *self, PyObject *args, PyObject *kw)
{
    static char *names[] = {"cache", "pairs", "counters", "sinks", "ports", "max_vframe",
                            "max_gso_vframe", "enabled", NULL};
    PyObject *cache, *pairs, *counters, *sinks, *ports;
    Py_ssize_t max_vframe, max_gso;
    int enabled;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!O!O!O!O!nnp", names, &PyDict_Type, &cache,
                                     &PyDict_Type, &pairs, &PyDict_Type, &counters,
                                     &PyTuple_Type, &sinks, &PyBytes_Type, &ports,
                                     &max_vframe, &max_gso, &enabled))
        return NULL;
    if (PyTuple_GET_SIZE(sinks) != PyBytes_GET_SIZE(ports)) {
        PyErr_SetString(PyExc_ValueError, "sinks and ports differ in length");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(sinks); i++) {
        PyObject *s = PyTuple_GET_ITEM(sinks, i);
        if (s != Py_None && !PyObject_TypeCheck(s, &SinkType)) {
            PyErr_Format(PyExc_TypeError, "sink of port %zd is not a Sink", i);
            return NULL;
        }
    }
    Py_INCREF(cache); Py_SETREF(self->cache, cache);
    Py_INCREF(pairs); Py_SETREF(self->pairs, pairs);
    Py_INCREF(counters); Py_SETREF(self->counters, counters);
    Py_INCREF(sinks); Py_SETREF(self->sinks, sinks);
    Py_INCREF(ports); Py_SETREF(self->ports, ports);
    self->max_vframe = max_vframe;
    self->max_gso_vframe = max_gso;
    self->enabled = enabled;
    Py_RETURN_NONE;
}

/* obj.name += delta for a Python int attribute. */
static int add_attr(PyObject *obj, PyObject *name, long long delta)
{
    PyObject *old = PyObject_GetAttr(obj, name);
    if (old == NULL)
        return -1;
    PyObject *d = PyLong_FromLongLong(delta);
    PyObject *sum = d ? PyNumber_Add(old, d) : NULL;
    Py_DECREF(old);
    Py_XDECREF(d);
    if (sum == NULL)
        return -1;
    int r = PyObject_SetAttr(obj, name, sum);
    Py_DECREF(sum);
    return r;
}

/* dict[key] += delta for a Python int item (missing counts as 0). */
static int add_item(PyObject *dict, PyObject *key, long long delta)
{
    PyObject *old = PyDict_GetItemWithError(dict, key); /* borrowed */
    if (old == NULL && PyErr_Occurred())
        return -1;
    PyObject *d = PyLong_FromLongLong(delta);
    PyObject *sum = (d == NULL || old == NULL) ? Py_XNewRef(d) : PyNumber_Add(old, d);
    Py_XDECREF(d);
    if (sum == NULL)
        return -1;
    int r = PyDict_SetItem(dict, key, sum);
    Py_DECREF(sum);
    return r;
}

static int add_list_item(PyObject *list, Py_ssize_t i, long long delta)
{
    PyObject *old = PyList_GET_ITEM(list, i);
    PyObject *sum = PyLong_FromLongLong(PyLong_AsLongLong(old) + delta);
    if (sum == NULL)
        return -1;
    PyList_SetItem(list, i, sum); /* steals sum, drops old */
    return 0;
}

/* Write one vframe to a sink. 1: sent (or queued on the transport), 0: not
 * sent (the Python path retries it and does the error accounting), -1: error. */
static int sink_send(Sink *sink, const char *vf, Py_ssize_t n)
{
    if (sink->conn == NULL) {
        ssize_t w = write(sink->fd, vf, (size_t)n);
        return w == n ? 1 : 0;
    }
    StreamBase *conn = sink->conn;
    int fd = conn->read_fd;
    if (fd < 0)
        return 0; /* not (or no longer) the connection's to write: Python's turn */
    if (conn->queued) {
        PyObject *queued = PyObject_CallNoArgs(sink->buffered);
        if (queued == NULL)
            return -1;
        long q = PyLong_AsLong(queued);
        Py_DECREF(queued);
        if (q != 0)
            return q == -1 && PyErr_Occurred() ? -1 : 0; /* keep order: Python queues it */
        conn->queued = 0;
    }
    unsigned char hdr[5];
    uint32_t len = (uint32_t)n + 1;
    hdr[0] = len >> 24; hdr[1] = len >> 16; hdr[2] = len >> 8; hdr[3] = len;
    hdr[4] = MSG_FRAME;
    struct iovec iov[2] = {{hdr, 5}, {(void *)vf, (size_t)n}};
    ssize_t w = writev(fd, iov, 2);
    if (w < 0)
        return 0; /* EAGAIN or an error: the transport's own write sees and reports it */
    if (w < n + 5) {
        /* The kernel took part: the rest goes to the transport's buffer, in order. */
        PyObject *rest;
        if (w < 5) {
            rest = PyBytes_FromStringAndSize(NULL, n + 5 - w);
            if (rest == NULL)
                return -1;
            memcpy(PyBytes_AS_STRING(rest), hdr + w, 5 - w);
            memcpy(PyBytes_AS_STRING(rest) + 5 - w, vf, n);
        } else {
            rest = PyBytes_FromStringAndSize(vf + (w - 5), n + 5 - w);
            if (rest == NULL)
                return -1;
        }
        conn->queued = 1;
        PyObject *r = PyObject_CallOneArg(sink->write, rest);
        Py_DECREF(rest);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
    }
    return 1;
}

/* Carry one vframe from port `ingress` if the answer is cached and plain.
 * 1: carried and counted; 0: not touched (the Python path takes it); -1: error. */
static int switch_frame(Switch *sw, Py_ssize_t ingress, const char *vf, Py_ssize_t n)
{
    const unsigned char *flags = (const unsigned char *)PyBytes_AS_STRING(sw->ports);
    Py_ssize_t nports = PyBytes_GET_SIZE(sw->ports);
    if (!sw->enabled || ingress < 0 || ingress >= nports || !(flags[ingress] & PORT_IN))
        return 0;
    if (n < VNET_HDR_LEN + 14)
        return 0; /* a runt: Python logs and counts it */
    if (n > sw->max_vframe && (vf[1] == 0 || n > sw->max_gso_vframe))
        return 0; /* oversized: likewise */
    if (vf[KEY_OFF] & 1)
        return 0; /* broadcast and multicast take the flood tree in Python */
    PyObject *key = PyBytes_FromStringAndSize(vf + KEY_OFF, KEY_LEN);
    if (key == NULL)
        return -1;
    int result = 0;
    PyObject *out_obj = PyDict_GetItemWithError(sw->cache, key); /* borrowed */
    if (out_obj == NULL) {
        result = PyErr_Occurred() ? -1 : 0;
        goto done;
    }
    Py_ssize_t out = PyLong_AsSsize_t(out_obj);
    if (out < 0 || out >= nports || out == ingress) {
        result = (out == -1 && PyErr_Occurred()) ? -1 : 0;
        goto done;
    }
    int seg = flags[ingress] & PORT_SEGMENT;
    if (seg && seg == (flags[out] & PORT_SEGMENT))
        goto done;
    PyObject *sink = PyTuple_GET_ITEM(sw->sinks, out);
    if (sink == Py_None)
        goto done;
    PyObject *pair = NULL;
    if (flags[ingress] & PORT_COUNTED) {
        pair = PyDict_GetItemWithError(sw->pairs, key); /* borrowed */
        if (pair == NULL || !PyList_CheckExact(pair) || PyList_GET_SIZE(pair) < 2) {
            result = PyErr_Occurred() ? -1 : 0; /* a new pair: Python makes its entry */
            goto done;
        }
    }
    result = sink_send((Sink *)sink, vf, n);
    if (result != 1)
        goto done;
    sw->fast_frames++;
    if (add_item(sw->counters, str_frames_in, 1) < 0)
        goto fail;
    if (pair != NULL && (add_list_item(pair, 0, 1) < 0 ||
                         add_list_item(pair, 1, n - VNET_HDR_LEN) < 0))
        goto fail;
    PyObject *stats = ((Sink *)sink)->stats;
    if (stats != Py_None && (add_attr(stats, str_tx_frames, 1) < 0 ||
                             add_attr(stats, str_tx_bytes, n - VNET_HDR_LEN) < 0))
        goto fail;
    goto done;
fail:
    result = -1;
done:
    Py_DECREF(key);
    return result;
}

static PyObject *Switch_frame(Switch *self, PyObject *args)
{
    Py_ssize_t ingress;
    Py_buffer vf;
    if (!PyArg_ParseTuple(args, "ny*", &ingress, &vf))
        return NULL;
    int r = switch_frame(self, ingress, vf.buf, vf.len);
    PyBuffer_Release(&vf);
    if (r < 0)
        return NULL;
    return PyBool_FromLong(r);
}

static PyMethodDef Switch_methods[] = {
    {"configure", (PyCFunction)(void (*)(void))Switch_configure, METH_VARARGS | METH_KEYWORDS,
     "Take the forwarder's tables: cache, pairs, counters, sinks, ports, sizes, enabled."},
    {"frame", (PyCFunction)Switch_frame, METH_VARARGS,
     "frame(ingress, vframe) -> bool: carry one vframe if the fast path can (tests)."},
    {NULL},
};

static PyMemberDef Switch_members[] = {
    {"enabled", T_INT, offsetof(Switch, enabled), READONLY, "frames may go fast"},
    {"fast_frames", T_ULONGLONG, offsetof(Switch, fast_frames), READONLY,
     "frames the fast path carried"},
    {NULL},
};

static PyTypeObject SwitchType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "services.forwarder._fastpath.Switch",
    .tp_basicsize = sizeof(Switch),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The forwarder's tables as the fast path sees them.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Switch_init,
    .tp_dealloc = (destructor)Switch_dealloc,
    .tp_methods = Switch_methods,
    .tp_members = Switch_members,
};

/* ----------------------------------------------------------- GuestReader */

/* Reads an fd attachment (AF_PACKET socket or TAP) on readability: frames the
 * switch can carry go at once; from the first it cannot, the rest of the batch
 * goes to on_frames(list[bytes]); a read error goes to on_error(), the Python
 * reader, which reads again and handles it. */
typedef struct {
    PyObject_HEAD
    int fd;
    Py_ssize_t ingress;
    int batch;
    Switch *sw;
    PyObject *on_frames;
    PyObject *on_error;
    char *buf;
    Py_ssize_t size;
} GuestReader;

static int GuestReader_init(GuestReader *self, PyObject *args, PyObject *kw)
{
    static char *names[] = {"fd", "ingress", "switch", "on_frames", "on_error", "read_size",
                            "batch", NULL};
    PyObject *sw, *on_frames, *on_error;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "inO!OOni", names, &self->fd, &self->ingress,
                                     &SwitchType, &sw, &on_frames, &on_error, &self->size,
                                     &self->batch))
        return -1;
    if (self->size <= 0 || self->batch <= 0) {
        PyErr_SetString(PyExc_ValueError, "read_size and batch must be positive");
        return -1;
    }
    PyMem_Free(self->buf);
    self->buf = PyMem_Malloc(self->size);
    if (self->buf == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    Py_INCREF(sw); Py_XSETREF(self->sw, (Switch *)sw);
    Py_INCREF(on_frames); Py_XSETREF(self->on_frames, on_frames);
    Py_INCREF(on_error); Py_XSETREF(self->on_error, on_error);
    return 0;
}

static void GuestReader_dealloc(GuestReader *self)
{
    Py_XDECREF(self->sw);
    Py_XDECREF(self->on_frames);
    Py_XDECREF(self->on_error);
    PyMem_Free(self->buf);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* fn(arg), or fn() when arg is NULL; the result is dropped. 0, or -1 on error. */
static int call_with(PyObject *fn, PyObject *arg)
{
    PyObject *r = arg ? PyObject_CallOneArg(fn, arg) : PyObject_CallNoArgs(fn);
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

static PyObject *GuestReader_readable(GuestReader *self, PyObject *unused)
{
    PyObject *slow = NULL;
    int failed = 0;
    for (int i = 0; i < self->batch; i++) {
        ssize_t r = read(self->fd, self->buf, (size_t)self->size);
        if (r < 0) {
            failed = errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR;
            break;
        }
        if (slow == NULL) {
            int h = switch_frame(self->sw, self->ingress, self->buf, r);
            if (h < 0)
                return NULL;
            if (h == 1)
                continue;
            slow = PyList_New(0);
            if (slow == NULL)
                return NULL;
        }
        PyObject *frame = PyBytes_FromStringAndSize(self->buf, r);
        if (frame == NULL || PyList_Append(slow, frame) < 0) {
            Py_XDECREF(frame);
            Py_DECREF(slow);
            return NULL;
        }
        Py_DECREF(frame);
    }
    if (slow != NULL) {
        int r = call_with(self->on_frames, slow);
        Py_DECREF(slow);
        if (r < 0)
            return NULL;
    }
    if (failed && call_with(self->on_error, NULL) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef GuestReader_methods[] = {
    {"readable", (PyCFunction)GuestReader_readable, METH_NOARGS,
     "The fd is readable: read up to a batch of frames and carry them."},
    {NULL},
};

static PyTypeObject GuestReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "services.forwarder._fastpath.GuestReader",
    .tp_basicsize = sizeof(GuestReader),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "GuestReader(fd, ingress, switch, on_frames, on_error, read_size, batch)",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)GuestReader_init,
    .tp_dealloc = (destructor)GuestReader_dealloc,
    .tp_methods = GuestReader_methods,
};

/* ---------------------------------------------------- StreamBase methods */

static int StreamBase_init(StreamBase *self, PyObject *args, PyObject *kw)
{
    return 0;
}

static PyObject *StreamBase_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    StreamBase *self = (StreamBase *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->fast_port = -1;
    self->read_fd = -1;
    Py_INCREF(Py_None);
    self->fast_stats = Py_None;
    Py_INCREF(Py_None);
    self->clock_owner = Py_None;
    return (PyObject *)self;
}

static int StreamBase_traverse(StreamBase *self, visitproc visit, void *arg)
{
    Py_VISIT(self->dict);
    Py_VISIT(self->sw);
    Py_VISIT(self->fast_stats);
    Py_VISIT(self->clock_owner);
    return 0;
}

static int StreamBase_clear(StreamBase *self)
{
    Py_CLEAR(self->dict);
    Py_CLEAR(self->sw);
    Py_CLEAR(self->fast_stats);
    Py_CLEAR(self->clock_owner);
    return 0;
}

static void StreamBase_dealloc(StreamBase *self)
{
    PyObject_GC_UnTrack(self);
    StreamBase_clear(self);
    PyMem_Free(self->buf);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *StreamBase_setup(StreamBase *self, PyObject *args, PyObject *kw)
{
    static char *names[] = {"size", "chunk", "max_message", "max_control", "types", NULL};
    Py_ssize_t size, chunk, max_message, max_control;
    PyObject *types;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "nnnnO", names, &size, &chunk, &max_message,
                                     &max_control, &types))
        return NULL;
    if (chunk <= 0 || size < 2 * chunk) {
        PyErr_SetString(PyExc_ValueError, "need 0 < chunk and 2 * chunk <= size");
        return NULL;
    }
    char *buf = PyMem_Malloc(size);
    if (buf == NULL)
        return PyErr_NoMemory();
    PyMem_Free(self->buf);
    self->buf = buf;
    self->size = size;
    self->chunk = chunk;
    self->start = self->end = 0;
    self->max_message = max_message;
    self->max_control = max_control;
    memset(self->known, 0, sizeof self->known);
    PyObject *it = PyObject_GetIter(types);
    if (it == NULL)
        return NULL;
    PyObject *item;
    while ((item = PyIter_Next(it)) != NULL) {
        long t = PyLong_AsLong(item);
        Py_DECREF(item);
        if (t < 0 || t > 255) {
            Py_DECREF(it);
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "message types are 0..255");
            return NULL;
        }
        self->known[t >> 3] |= 1 << (t & 7);
    }
    Py_DECREF(it);
    if (PyErr_Occurred())
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *StreamBase_go_fast(StreamBase *self, PyObject *args, PyObject *kw)
{
    static char *names[] = {"switch", "port", "stats", "clock_owner", NULL};
    PyObject *sw = Py_None, *stats = Py_None, *owner = Py_None;
    Py_ssize_t port = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|OnOO", names, &sw, &port, &stats, &owner))
        return NULL;
    if (sw != Py_None && !PyObject_TypeCheck(sw, &SwitchType)) {
        PyErr_SetString(PyExc_TypeError, "switch must be a Switch or None");
        return NULL;
    }
    if (sw == Py_None)
        port = -1;
    Py_XINCREF(sw == Py_None ? NULL : sw);
    Py_XSETREF(self->sw, sw == Py_None ? NULL : (Switch *)sw);
    self->fast_port = port;
    Py_INCREF(stats); Py_SETREF(self->fast_stats, stats);
    Py_INCREF(owner); Py_SETREF(self->clock_owner, owner);
    Py_RETURN_NONE;
}

/* Room for one more chunk at the end of the buffer. 0, or -1 before setup(). */
static int make_room(StreamBase *self)
{
    if (self->buf == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "StreamBase.setup() was not called");
        return -1;
    }
    if (self->size - self->end < self->chunk) {
        Py_ssize_t pending = self->end - self->start;
        memmove(self->buf, self->buf + self->start, pending);
        self->start = 0;
        self->end = pending;
    }
    return 0;
}

static PyObject *StreamBase_get_buffer(StreamBase *self, PyObject *sizehint)
{
    if (make_room(self) < 0)
        return NULL;
    return PyMemoryView_FromMemory(self->buf + self->end, self->chunk, PyBUF_WRITE);
}

static PyObject *bad_stream(StreamBase *self, const char *reason, PyObject *detail)
{
    if (detail == NULL)
        return NULL;
    PyObject *why = PyUnicode_FromString(reason);
    PyObject *r = why ? PyObject_CallMethodObjArgs((PyObject *)self, str_bad_stream, why,
                                                   detail, NULL) : NULL;
    Py_XDECREF(why);
    Py_DECREF(detail);
    if (r == NULL)
        return NULL;
    Py_DECREF(r);
    Py_RETURN_NONE;
}

static PyObject *stream_updated(StreamBase *self, Py_ssize_t nbytes);

static PyObject *StreamBase_buffer_updated(StreamBase *self, PyObject *arg)
{
    Py_ssize_t nbytes = PyLong_AsSsize_t(arg);
    if (nbytes == -1 && PyErr_Occurred())
        return NULL;
    return stream_updated(self, nbytes);
}

/* nbytes more were received at the end of the buffer: carry or hand up its messages. */
static PyObject *stream_updated(StreamBase *self, Py_ssize_t nbytes)
{
    if (nbytes < 0 || nbytes > self->size - self->end) {
        PyErr_SetString(PyExc_ValueError, "nbytes outside the buffer");
        return NULL;
    }
    self->end += nbytes;
    const unsigned char *b = (const unsigned char *)self->buf;
    PyObject *slow = NULL;
    long long fast_frames = 0, fast_bytes = 0;
    PyObject *result = NULL;
    while (self->end - self->start >= 5) {
        const unsigned char *p = b + self->start;
        uint32_t n = ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
        unsigned kind = p[4];
        if (n == 0 || n > (uint64_t)self->max_message) {
            result = bad_stream(self, "bad_length", PyUnicode_FromFormat(
                "message length %lu outside 1..%zd", (unsigned long)n, self->max_message));
            goto out_error;
        }
        if (!(self->known[kind >> 3] & (1 << (kind & 7)))) {
            result = bad_stream(self, "bad_type", PyUnicode_FromFormat(
                "message type %u is unknown", kind));
            goto out_error;
        }
        if (kind != MSG_FRAME && n > (uint64_t)self->max_control) {
            result = bad_stream(self, "bad_length", PyUnicode_FromFormat(
                "control message of %lu bytes", (unsigned long)n));
            goto out_error;
        }
        if ((uint64_t)(self->end - self->start) < 4 + (uint64_t)n)
            break;
        const char *body = (const char *)p + 5;
        Py_ssize_t len = (Py_ssize_t)n - 1;
        if (slow == NULL && kind == MSG_FRAME && self->fast_port >= 0 && self->sw != NULL) {
            int h = switch_frame(self->sw, self->fast_port, body, len);
            if (h < 0)
                goto out_error;
            if (h == 1) {
                fast_frames++;
                fast_bytes += len - VNET_HDR_LEN;
                self->start += 4 + n;
                continue;
            }
        }
        if (slow == NULL && (slow = PyList_New(0)) == NULL)
            goto out_error;
        PyObject *msg = Py_BuildValue("(iy#)", (int)kind, body, len);
        if (msg == NULL || PyList_Append(slow, msg) < 0) {
            Py_XDECREF(msg);
            goto out_error;
        }
        Py_DECREF(msg);
        self->start += 4 + n;
    }
    if (self->start == self->end)
        self->start = self->end = 0;
    if (fast_frames && self->fast_stats != Py_None) {
        if (add_attr(self->fast_stats, str_rx_frames, fast_frames) < 0 ||
            add_attr(self->fast_stats, str_rx_bytes, fast_bytes) < 0)
            goto out_error;
        PyObject *now = PyObject_GetAttr(self->clock_owner, str_clock);
        if (now == NULL)
            goto out_error;
        int r = PyObject_SetAttr(self->fast_stats, str_last_rx, now);
        Py_DECREF(now);
        if (r < 0)
            goto out_error;
    }
    if (slow != NULL) {
        PyObject *r = PyObject_CallMethodOneArg((PyObject *)self, str_deliver, slow);
        Py_DECREF(slow);
        if (r == NULL)
            return NULL;
        Py_DECREF(r);
    }
    Py_RETURN_NONE;
out_error:
    /* A malformed stream (the connection closes) or an error: as in the Python
     * decoder, nothing more of this read is handed up. */
    Py_XDECREF(slow);
    return result;
}

/* The socket (read_from's fd) is readable: receive and carry, as the transport's
 * get_buffer/buffer_updated would, without two calls into Python per read. End of
 * stream or an error goes to self._read_in_transport(), which hands reading back
 * to the transport: it reads the end (or the error) again and reports it as usual. */
static PyObject *StreamBase_readable(StreamBase *self, PyObject *unused)
{
    for (int i = 0; i < 16 && self->read_fd >= 0; i++) {
        if (make_room(self) < 0)
            return NULL;
        ssize_t n = recv(self->read_fd, self->buf + self->end, (size_t)self->chunk, MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return PyObject_CallMethodNoArgs((PyObject *)self, str_read_in_transport);
        PyObject *r = stream_updated(self, n);
        if (r == NULL)
            return NULL;
        Py_DECREF(r);
        if (n < self->chunk)
            break; /* drained: the next readiness brings more */
    }
    Py_RETURN_NONE;
}

static PyObject *StreamBase_read_from(StreamBase *self, PyObject *arg)
{
    int fd = PyLong_AsLong(arg);
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    self->read_fd = fd < 0 ? -1 : fd;
    Py_RETURN_NONE;
}

static PyObject *StreamBase_get_pending(StreamBase *self, void *closure)
{
    return PyLong_FromSsize_t(self->end - self->start);
}

static PyMethodDef StreamBase_methods[] = {
    {"setup", (PyCFunction)(void (*)(void))StreamBase_setup, METH_VARARGS | METH_KEYWORDS,
     "setup(size, chunk, max_message, max_control, types): the receive buffer and limits."},
    {"go_fast", (PyCFunction)(void (*)(void))StreamBase_go_fast, METH_VARARGS | METH_KEYWORDS,
     "go_fast(switch, port, stats, clock_owner): frames may go fast; go_fast() stops it."},
    {"get_buffer", (PyCFunction)StreamBase_get_buffer, METH_O, "BufferedProtocol.get_buffer"},
    {"buffer_updated", (PyCFunction)StreamBase_buffer_updated, METH_O,
     "BufferedProtocol.buffer_updated"},
    {"readable", (PyCFunction)StreamBase_readable, METH_NOARGS,
     "The socket read_from() named is readable: receive and carry (a reader callback)."},
    {"read_from", (PyCFunction)StreamBase_read_from, METH_O,
     "read_from(fd): readable() reads this socket; read_from(-1) stops it."},
    {NULL},
};

static PyGetSetDef StreamBase_getset[] = {
    {"pending", (getter)StreamBase_get_pending, NULL, "bytes received, not yet a message", NULL},
    {NULL},
};

static PyMemberDef StreamBase_members[] = {
    {"fast_port", T_PYSSIZET, offsetof(StreamBase, fast_port), READONLY,
     "the link's port while its frames may go fast, else -1"},
    {"read_fd", T_INT, offsetof(StreamBase, read_fd), READONLY,
     "the fd readable() reads (and a link sink writes), else -1"},
    {"queued", T_INT, offsetof(StreamBase, queued), 0,
     "set when bytes go to the transport: a sink asks it before writing around it"},
    {NULL},
};

static PyTypeObject StreamBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "services.forwarder._fastpath.StreamBase",
    .tp_basicsize = sizeof(StreamBase),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The receive half of a link connection, in C.",
    .tp_new = StreamBase_new,
    .tp_init = (initproc)StreamBase_init,
    .tp_traverse = (traverseproc)StreamBase_traverse,
    .tp_clear = (inquiry)StreamBase_clear,
    .tp_dealloc = (destructor)StreamBase_dealloc,
    .tp_methods = StreamBase_methods,
    .tp_getset = StreamBase_getset,
    .tp_members = StreamBase_members,
    .tp_dictoffset = offsetof(StreamBase, dict),
};

/* ---------------------------------------------------------------- module */

static struct PyModuleDef fastpath_module = {
    PyModuleDef_HEAD_INIT, "_fastpath",
    "The forwarder's compiled fast path (see _fastpath.c).", -1, NULL,
};

#define INTERN(var, text) if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL

PyMODINIT_FUNC PyInit__fastpath(void)
{
    INTERN(str_frames_in, "frames_in");
    INTERN(str_tx_frames, "tx_frames");
    INTERN(str_tx_bytes, "tx_bytes");
    INTERN(str_rx_frames, "rx_frames");
    INTERN(str_rx_bytes, "rx_bytes");
    INTERN(str_last_rx, "last_rx");
    INTERN(str_clock, "_clock");
    INTERN(str_get_write_buffer_size, "get_write_buffer_size");
    INTERN(str_write, "write");
    INTERN(str_deliver, "_deliver");
    INTERN(str_bad_stream, "_bad_stream");
    INTERN(str_read_in_transport, "_read_in_transport");
    if (PyType_Ready(&SinkType) < 0 || PyType_Ready(&SwitchType) < 0 ||
        PyType_Ready(&GuestReaderType) < 0 || PyType_Ready(&StreamBaseType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&fastpath_module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Sink", (PyObject *)&SinkType) < 0 ||
        PyModule_AddObjectRef(m, "Switch", (PyObject *)&SwitchType) < 0 ||
        PyModule_AddObjectRef(m, "GuestReader", (PyObject *)&GuestReaderType) < 0 ||
        PyModule_AddObjectRef(m, "StreamBase", (PyObject *)&StreamBaseType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
