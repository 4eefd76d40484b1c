/* See grpc_reflection.h. The descriptor set is indexed once (file names, their
 * dependencies, and every fully qualified service, method, message and enum name) by a
 * small protobuf wire-format walker: only those few fields of descriptor.proto are read,
 * and the FileDescriptorProtos are sent back as the bytes protoc wrote. */
#include "grpc_reflection.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/reflection.pb-c.h"

#define NOT_FOUND 5 /* grpc_status_code GRPC_STATUS_NOT_FOUND */
#define MAX_FILES 64
#define MAX_SYMBOLS 1024
#define MAX_DEPS 16

typedef struct {
    char name[256];
    const uint8_t *data; /* the FileDescriptorProto, inside mm_descriptor_set */
    size_t len;
    char deps[MAX_DEPS][256];
    int n_deps;
} desc_file;

typedef struct {
    char name[256];
    int file;
    int is_service;
} desc_symbol;

static struct {
    desc_file files[MAX_FILES];
    int n_files;
    desc_symbol symbols[MAX_SYMBOLS];
    int n_symbols;
    int ok;
} g_index;
static pthread_once_t g_index_once = PTHREAD_ONCE_INIT;

/* --- protobuf wire format: just enough to walk descriptor.proto */

typedef struct {
    const uint8_t *p, *end;
} wire;

static int wire_varint(wire *w, uint64_t *v) {
    *v = 0;
    for (int shift = 0; shift < 64 && w->p < w->end; shift += 7) {
        uint8_t b = *w->p++;
        *v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) return 0;
    }
    return -1;
}

/* The next field: 1 and its number (+ bytes when length-delimited), 0 at the end, -1 malformed. */
static int wire_next(wire *w, uint32_t *field, const uint8_t **data, size_t *len) {
    if (w->p >= w->end) return 0;
    uint64_t key, v;
    if (wire_varint(w, &key)) return -1;
    *field = (uint32_t)(key >> 3), *data = NULL, *len = 0;
    switch (key & 7) {
    case 0: return wire_varint(w, &v) ? -1 : 1;
    case 1: return (w->end - w->p < 8) ? -1 : (w->p += 8, 1);
    case 5: return (w->end - w->p < 4) ? -1 : (w->p += 4, 1);
    case 2:
        if (wire_varint(w, &v) || v > (uint64_t)(w->end - w->p)) return -1;
        *data = w->p, *len = (size_t)v, w->p += v;
        return 1;
    default: return -1;
    }
}

static void copy_str(char *out, size_t cap, const uint8_t *data, size_t len) {
    snprintf(out, cap, "%.*s", (int)(len < cap ? len : cap - 1), (const char *)data);
}

static int add_symbol(const char *scope, const uint8_t *name, size_t len, int file, int is_service, char *out, size_t cap) {
    if (g_index.n_symbols == MAX_SYMBOLS) return -1;
    desc_symbol *s = &g_index.symbols[g_index.n_symbols++];
    snprintf(s->name, sizeof s->name, "%s%s%.*s", scope, scope[0] ? "." : "", (int)len, (const char *)name);
    s->file = file, s->is_service = is_service;
    if (out) snprintf(out, cap, "%s", s->name);
    return 0;
}

/* A message, enum or service (what) of file under scope: its name, and for messages the
 * nested messages and enums, for services the methods. */
static int index_type(const uint8_t *data, size_t len, const char *scope, int file, char what) {
    wire w = {data, data + len};
    uint32_t f;
    const uint8_t *d;
    size_t n;
    int r;
    char self[256] = "";
    while ((r = wire_next(&w, &f, &d, &n)) == 1) /* the name first: nested names need it */
        if (f == 1 && d && add_symbol(scope, d, n, file, what == 's', self, sizeof self)) return -1;
    if (r < 0 || !self[0]) return -1;
    w = (wire){data, data + len};
    while ((r = wire_next(&w, &f, &d, &n)) == 1) {
        if (!d) continue;
        if (what == 'm' && (f == 3 || f == 4) && index_type(d, n, self, file, f == 3 ? 'm' : 'e')) return -1;
        if (what == 's' && f == 2 && index_type(d, n, self, file, 'x')) return -1; /* a method */
    }
    return r;
}

static int index_file(const uint8_t *data, size_t len) {
    if (g_index.n_files == MAX_FILES) return -1;
    int k = g_index.n_files++;
    desc_file *df = &g_index.files[k];
    df->data = data, df->len = len;
    char package[256] = "";
    wire w = {data, data + len};
    uint32_t f;
    const uint8_t *d;
    size_t n;
    int r;
    while ((r = wire_next(&w, &f, &d, &n)) == 1) {
        if (f == 1 && d) copy_str(df->name, sizeof df->name, d, n);
        if (f == 2 && d) copy_str(package, sizeof package, d, n);
        if (f == 3 && d && df->n_deps < MAX_DEPS) copy_str(df->deps[df->n_deps++], sizeof df->deps[0], d, n);
    }
    if (r < 0) return -1;
    w = (wire){data, data + len};
    while ((r = wire_next(&w, &f, &d, &n)) == 1) {
        if (!d || (f != 4 && f != 5 && f != 6)) continue;
        if (index_type(d, n, package, k, f == 4 ? 'm' : f == 5 ? 'e' : 's')) return -1;
    }
    return r;
}

static void build_index(void) {
    wire w = {mm_descriptor_set, mm_descriptor_set + mm_descriptor_set_len};
    uint32_t f;
    const uint8_t *d;
    size_t n;
    int r;
    while ((r = wire_next(&w, &f, &d, &n)) == 1) /* FileDescriptorSet.file = 1 */
        if (f == 1 && d && index_file(d, n)) return;
    g_index.ok = r == 0;
}

static int find_file(const char *name) {
    for (int i = 0; i < g_index.n_files; i++)
        if (!strcmp(g_index.files[i].name, name)) return i;
    return -1;
}

static const desc_symbol *find_symbol(const char *name) {
    for (int i = 0; i < g_index.n_symbols; i++)
        if (!strcmp(g_index.symbols[i].name, name)) return &g_index.symbols[i];
    return NULL;
}

/* --- answers */

/* The file and the files it depends on, transitively, the file first. */
static void file_closure(int file, ProtobufCBinaryData *out, size_t *n) {
    int order[MAX_FILES], seen[MAX_FILES] = {0}, count = 0;
    order[count++] = file, seen[file] = 1;
    for (int i = 0; i < count; i++) {
        const desc_file *df = &g_index.files[order[i]];
        for (int k = 0; k < df->n_deps; k++) {
            int dep = find_file(df->deps[k]);
            if (dep >= 0 && !seen[dep]) seen[dep] = 1, order[count++] = dep;
        }
    }
    for (int i = 0; i < count; i++)
        out[i] = (ProtobufCBinaryData){g_index.files[order[i]].len, (uint8_t *)g_index.files[order[i]].data};
    *n = (size_t)count;
}

int mm_reflection_answer(const uint8_t *req_data, size_t len, uint8_t **resp, size_t *resp_len) {
    pthread_once(&g_index_once, build_index);
    Grpc__Reflection__V1__ServerReflectionRequest *req =
        grpc__reflection__v1__server_reflection_request__unpack(NULL, len, req_data);
    if (!req) return -1;
    Grpc__Reflection__V1__ServerReflectionResponse r = GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__INIT;
    Grpc__Reflection__V1__FileDescriptorResponse files = GRPC__REFLECTION__V1__FILE_DESCRIPTOR_RESPONSE__INIT;
    Grpc__Reflection__V1__ListServiceResponse list = GRPC__REFLECTION__V1__LIST_SERVICE_RESPONSE__INIT;
    Grpc__Reflection__V1__ExtensionNumberResponse ext = GRPC__REFLECTION__V1__EXTENSION_NUMBER_RESPONSE__INIT;
    Grpc__Reflection__V1__ErrorResponse err = GRPC__REFLECTION__V1__ERROR_RESPONSE__INIT;
    ProtobufCBinaryData file_bytes[MAX_FILES];
    Grpc__Reflection__V1__ServiceResponse services[MAX_FILES], *service_ptrs[MAX_FILES];
    char msg[512];
    r.valid_host = req->host;
    r.original_request = req;
    int file = -1;
    const desc_symbol *sym;
    switch (req->message_request_case) {
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_LIST_SERVICES:
        for (int i = 0; i < g_index.n_symbols && list.n_service < MAX_FILES; i++) {
            if (!g_index.symbols[i].is_service) continue;
            grpc__reflection__v1__service_response__init(&services[list.n_service]);
            services[list.n_service].name = g_index.symbols[i].name;
            service_ptrs[list.n_service] = &services[list.n_service];
            list.n_service++;
        }
        list.service = service_ptrs;
        r.message_response_case = GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_LIST_SERVICES_RESPONSE;
        r.list_services_response = &list;
        break;
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_BY_FILENAME:
        file = find_file(req->file_by_filename);
        if (file < 0) snprintf(msg, sizeof msg, "file not found: %s", req->file_by_filename);
        break;
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_SYMBOL:
        sym = find_symbol(req->file_containing_symbol);
        file = sym ? sym->file : -1;
        if (file < 0) snprintf(msg, sizeof msg, "symbol not found: %s", req->file_containing_symbol);
        break;
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_ALL_EXTENSION_NUMBERS_OF_TYPE:
        if (find_symbol(req->all_extension_numbers_of_type)) { /* no extensions: an empty list */
            ext.base_type_name = req->all_extension_numbers_of_type;
            r.message_response_case =
                GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ALL_EXTENSION_NUMBERS_RESPONSE;
            r.all_extension_numbers_response = &ext;
        } else {
            snprintf(msg, sizeof msg, "type not found: %s", req->all_extension_numbers_of_type);
        }
        break;
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_EXTENSION:
        snprintf(msg, sizeof msg, "extension not found: the services define no extensions");
        break;
    default: snprintf(msg, sizeof msg, "empty or unknown request"); break;
    }
    if (!g_index.ok) snprintf(msg, sizeof msg, "the embedded descriptor set is unreadable"), file = -1;
    if (file >= 0) {
        file_closure(file, file_bytes, &files.n_file_descriptor_proto);
        files.file_descriptor_proto = file_bytes;
        r.message_response_case = GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_FILE_DESCRIPTOR_RESPONSE;
        r.file_descriptor_response = &files;
    } else if (r.message_response_case == GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE__NOT_SET) {
        err.error_code = NOT_FOUND, err.error_message = msg;
        r.message_response_case = GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ERROR_RESPONSE;
        r.error_response = &err;
    }
    *resp_len = grpc__reflection__v1__server_reflection_response__get_packed_size(&r);
    *resp = malloc(*resp_len ? *resp_len : 1);
    if (*resp) grpc__reflection__v1__server_reflection_response__pack(&r, *resp);
    grpc__reflection__v1__server_reflection_request__free_unpacked(req, NULL);
    return *resp ? 0 : -1;
}
