/* The CUDA backend: device discovery, the context (one stream per backend, a cuBLAS
 * handle on it, scratch and a metadata ring), memory and weight ops, the device
 * memory planner, and the op table that points at the per-op .cu files. Host-side
 * row metadata (ids, positions, slots, block tables) arrives in host memory as the
 * interface says and is uploaded here, so model code stays backend-agnostic.
 * Must not know models: no LLaMA/UNet specifics here. */
#include <stdlib.h>
#include <string.h>

#include "attention.cuh"
#include "backend_cuda.h"
#include "elementwise.cuh"
#include "gather.cuh"
#include "gemm.cuh"
#include "norm.cuh"
#include "rope.cuh"
#include "sample.cuh"

#define META_INITIAL ((size_t)4 << 20)
#define MIB(x) ((double)(x) / (1024.0 * 1024.0))

extern "C" int mm_cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); /* clear the sticky error */
        return 0;
    }
    return n;
}

/* Sizes of live alloc() blocks, so dealloc can account for them (few, long-lived). */
typedef struct {
    void *p;
    size_t bytes;
} live_alloc;
typedef struct {
    mm_cuda_ctx c;
    live_alloc *live;
    int n_live, cap_live;
} cuda_backend_state;

static cuda_backend_state *state_of(mm_backend *be) { return (cuda_backend_state *)be->ctx; }

/* ---------------------------------------------------------------- scratch, metadata */

mm_status mm_cuda_scratch(mm_backend *be, size_t bytes, void **out) {
    mm_cuda_ctx *c = mm_cuda_ctx_of(be);
    if (bytes > c->scratch_cap) {
        size_t cap = c->scratch_cap + c->scratch_cap / 2;
        if (cap < bytes) cap = bytes;
        cap = (cap + 255) & ~(size_t)255;
        CUDA_CHECK(cudaStreamSynchronize(c->stream)); /* the old buffer may still be read */
        CUDA_CHECK(cudaFree(c->scratch));
        c->scratch = NULL, c->scratch_cap = 0;
        cudaError_t e = cudaMalloc(&c->scratch, cap);
        if (e != cudaSuccess) {
            size_t fr = 0, tot = 0;
            cudaGetLastError();
            cudaMemGetInfo(&fr, &tot);
            return MM_ERROR(MM_ERR_NOMEM, "CUDA scratch of %.1f MiB does not fit: %.1f MiB free (%s)", MIB(cap), MIB(fr),
                            cudaGetErrorString(e));
        }
        c->scratch_cap = cap;
    }
    *out = c->scratch;
    return MM_OK;
}

mm_status mm_cuda_meta_alloc(mm_backend *be, size_t bytes, void **host, void **dev) {
    mm_cuda_ctx *c = mm_cuda_ctx_of(be);
    bytes = (bytes + 255) & ~(size_t)255;
    if (c->meta_used + bytes > c->meta_cap) {
        /* wrap: every upload enqueued so far must have left the pinned buffer */
        CUDA_CHECK(cudaStreamSynchronize(c->stream));
        c->meta_used = 0;
        if (bytes > c->meta_cap) {
            size_t cap = bytes > 2 * c->meta_cap ? bytes : 2 * c->meta_cap;
            CUDA_CHECK(cudaFreeHost(c->meta_host));
            CUDA_CHECK(cudaFree(c->meta_dev));
            c->meta_host = NULL, c->meta_dev = NULL, c->meta_cap = 0;
            CUDA_CHECK(cudaMallocHost((void **)&c->meta_host, cap));
            CUDA_CHECK(cudaMalloc((void **)&c->meta_dev, cap));
            c->meta_cap = cap;
        }
    }
    *host = c->meta_host + c->meta_used;
    *dev = c->meta_dev + c->meta_used;
    c->meta_used += bytes;
    return MM_OK;
}

mm_status mm_cuda_meta_push(mm_backend *be, const void *host, void *dev, size_t bytes) {
    if (bytes) CUDA_CHECK(cudaMemcpyAsync(dev, host, bytes, cudaMemcpyHostToDevice, mm_cuda_ctx_of(be)->stream));
    return MM_OK;
}

mm_status mm_cuda_meta(mm_backend *be, const void *host, size_t bytes, void **dev) {
    void *h;
    CHECK(mm_cuda_meta_alloc(be, bytes, &h, dev));
    memcpy(h, host, bytes);
    return mm_cuda_meta_push(be, h, *dev, bytes);
}

/* ---------------------------------------------------------------- memory */

static void *cuda_alloc(mm_backend *be, size_t bytes) {
    cuda_backend_state *s = state_of(be);
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 256);
    if (e != cudaSuccess) {
        size_t fr = 0, tot = 0;
        cudaGetLastError();
        cudaMemGetInfo(&fr, &tot);
        MM_ERROR(MM_ERR_NOMEM, "CUDA alloc of %.1f MiB does not fit: %.1f MiB free of %.1f (weights %.1f MiB, "
                 "buffers %.1f MiB)", MIB(bytes), MIB(fr), MIB(tot), MIB(s->c.weight_bytes), MIB(s->c.alloc_bytes));
        return NULL;
    }
    if (s->n_live == s->cap_live) {
        int cap = s->cap_live ? 2 * s->cap_live : 64;
        live_alloc *l = (live_alloc *)realloc(s->live, (size_t)cap * sizeof *l);
        if (!l) {
            cudaFree(p);
            return NULL;
        }
        s->live = l, s->cap_live = cap;
    }
    s->live[s->n_live++] = (live_alloc){p, bytes};
    s->c.alloc_bytes += bytes;
    return p;
}

static void cuda_dealloc(mm_backend *be, void *p) {
    if (!p) return;
    cuda_backend_state *s = state_of(be);
    for (int i = 0; i < s->n_live; i++)
        if (s->live[i].p == p) {
            s->c.alloc_bytes -= s->live[i].bytes;
            s->live[i] = s->live[--s->n_live];
            break;
        }
    cudaFree(p); /* synchronises the device: a freed buffer is never still in use */
}

static mm_status cuda_upload(mm_backend *be, void *dst, const void *src, size_t bytes) {
    cudaStream_t st = mm_cuda_ctx_of(be)->stream;
    if (!bytes) return MM_OK;
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, st));
    CUDA_CHECK(cudaStreamSynchronize(st)); /* src may be reused when we return */
    return MM_OK;
}

static mm_status cuda_download(mm_backend *be, void *dst, const void *src, size_t bytes) {
    cudaStream_t st = mm_cuda_ctx_of(be)->stream;
    if (!bytes) return MM_OK;
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, st));
    CUDA_CHECK(cudaStreamSynchronize(st));
    return MM_OK;
}

static mm_status cuda_copy(mm_backend *be, void *dst, const void *src, size_t bytes) {
    if (bytes) CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, mm_cuda_ctx_of(be)->stream));
    return MM_OK;
}

/* ---------------------------------------------------------------- weights */

static float host_elem(mm_dtype dt, const void *p, int64_t i) {
    if (dt == MM_DTYPE_BF16) return mm_bf16_to_f32(((const uint16_t *)p)[i]);
    if (dt == MM_DTYPE_F16) return mm_f16_to_f32(((const uint16_t *)p)[i]);
    return ((const float *)p)[i];
}

static void weight_release(mm_backend *be, mm_tensor *t) {
    if (t->data) {
        state_of(be)->c.weight_bytes -= (size_t)mm_tensor_numel(t) * mm_dtype_size(t->dtype);
        cudaFree(t->data);
    }
    memset(t, 0, sizeof *t);
}

/* Matmul weights and tables keep the checkpoint's dtype (cuBLAS and the gather read
 * f32, f16 and bf16); vectors become f32; conv weights become f32 [OC, k, k, IC]. */
static mm_status weight_load(mm_backend *be, const mm_st_tensor *src, mm_weight_use use, mm_tensor *out) {
    mm_cuda_ctx *c = mm_cuda_ctx_of(be);
    if (!mm_dtype_is_float(src->dtype))
        return MM_ERROR(MM_ERR_FORMAT, "%s: tensor '%s' has dtype %s, expected F32, F16 or BF16", src->file, src->name,
                        mm_dtype_name(src->dtype));
    int want_ndim = use == MM_WEIGHT_VECTOR ? 1 : use == MM_WEIGHT_CONV ? 4 : 2;
    if (src->ndim != want_ndim)
        return MM_ERROR(MM_ERR_FORMAT, "%s: tensor '%s' has %d dims, expected %d", src->file, src->name, src->ndim,
                        want_ndim);
    memset(out, 0, sizeof *out);
    out->ndim = src->ndim;
    for (int i = 0; i < src->ndim; i++) out->shape[i] = src->shape[i];
    int to_f32 = use == MM_WEIGHT_VECTOR || use == MM_WEIGHT_CONV;
    out->dtype = to_f32 ? MM_DTYPE_F32 : src->dtype;
    size_t bytes = (size_t)src->numel * mm_dtype_size(out->dtype);
    const void *host = src->data;
    float *conv = NULL;
    if (to_f32 && (src->dtype != MM_DTYPE_F32 || use == MM_WEIGHT_CONV)) {
        float *f = (float *)malloc(bytes ? bytes : 4);
        if (!f) return MM_ERROR(MM_ERR_NOMEM, "%s: tensor '%s' as f32", src->file, src->name);
        for (int64_t i = 0; i < src->numel; i++) f[i] = host_elem(src->dtype, src->data, i);
        if (use == MM_WEIGHT_CONV) {
            conv = (float *)malloc(bytes ? bytes : 4);
            if (conv) mm_cuda_conv_weight_pack(f, src->shape[0], src->shape[1], src->shape[2], conv);
            free(f);
            if (!conv) return MM_ERROR(MM_ERR_NOMEM, "%s: tensor '%s' packed", src->file, src->name);
            host = conv;
        } else {
            host = conv = f;
        }
    }
    cudaError_t e = cudaMalloc(&out->data, bytes ? bytes : 256);
    if (e != cudaSuccess) {
        size_t fr = 0, tot = 0;
        cudaGetLastError();
        cudaMemGetInfo(&fr, &tot);
        free(conv);
        out->data = NULL;
        return MM_ERROR(MM_ERR_NOMEM, "%s: weight '%s' (%.1f MiB) does not fit on GPU %d: %.1f MiB free of %.1f, "
                        "%.1f MiB of weights already loaded", src->file, src->name, MIB(bytes), c->device, MIB(fr),
                        MIB(tot), MIB(c->weight_bytes));
    }
    c->weight_bytes += bytes;
    e = cudaMemcpyAsync(out->data, host, bytes, cudaMemcpyHostToDevice, c->stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(c->stream);
    free(conv);
    if (e != cudaSuccess) {
        weight_release(be, out);
        return MM_ERROR(MM_ERR_INTERNAL, "CUDA upload of '%s': %s", src->name, cudaGetErrorString(e));
    }
    return MM_OK;
}

/* ---------------------------------------------------------------- backend */

static void cuda_free(mm_backend *be) {
    if (!be) return;
    cuda_backend_state *s = state_of(be);
    if (s) {
        mm_cuda_ctx *c = &s->c;
        if (c->stream) cudaStreamSynchronize(c->stream);
        if (c->cublas) cublasDestroy(c->cublas);
        cudaFree(c->scratch);
        cudaFree(c->meta_dev);
        cudaFreeHost(c->meta_host);
        cudaFreeHost(c->out_host);
        if (c->stream) cudaStreamDestroy(c->stream);
        free(s->live);
        free(s);
    }
    free(be);
}

static const mm_backend_ops cuda_ops = {
    .name = "cuda",
    .free = cuda_free,
    .alloc = cuda_alloc,
    .dealloc = cuda_dealloc,
    .upload = cuda_upload,
    .download = cuda_download,
    .copy = cuda_copy,
    .weight_load = weight_load,
    .weight_release = weight_release,
    .embed = mm_cuda_embed,
    .matmul = mm_cuda_matmul,
    .rmsnorm = mm_cuda_rmsnorm,
    .rope = mm_cuda_rope,
    .kv_store = mm_cuda_kv_store,
    .attention = mm_cuda_attention,
    .silu_mul = mm_cuda_silu_mul,
    .add = mm_cuda_add,
    .softmax = mm_cuda_softmax,
    .layernorm = mm_cuda_layernorm,
    .add_bias = mm_cuda_add_bias,
    .gelu = mm_cuda_gelu,
    .l2norm = mm_cuda_l2norm,
    .attention_dense = mm_cuda_attention_dense,
    .conv2d = mm_cuda_conv2d,
    .groupnorm = mm_cuda_groupnorm,
    .upsample_nearest2x = mm_cuda_upsample_nearest2x,
    .activation = mm_cuda_activation,
    .geglu = mm_cuda_geglu,
    .concat_cols = mm_cuda_concat_cols,
    .sample = mm_cuda_sample,
    .patchify = mm_cuda_patchify,
    .resize_bilinear = mm_cuda_resize_bilinear,
};

/* Creates the context on the current device; on failure frees what it made. */
static mm_status ctx_create(mm_backend *be, int device) {
    mm_cuda_ctx *c = mm_cuda_ctx_of(be);
    c->device = device;
    CUDA_CHECK(cudaSetDevice(device));
    CUDA_CHECK(cudaDeviceGetAttribute(&c->sm_count, cudaDevAttrMultiProcessorCount, device));
    CUDA_CHECK(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
    CUBLAS_CHECK(cublasCreate(&c->cublas));
    CUBLAS_CHECK(cublasSetStream(c->cublas, c->stream));
    CUBLAS_CHECK(cublasSetMathMode(c->cublas, CUBLAS_DEFAULT_MATH)); /* no TF32 for f32 GEMMs */
    CUDA_CHECK(cudaMallocHost((void **)&c->meta_host, META_INITIAL));
    CUDA_CHECK(cudaMalloc((void **)&c->meta_dev, META_INITIAL));
    c->meta_cap = META_INITIAL;
    return MM_OK;
}

extern "C" mm_status mm_backend_cuda_init(int device, mm_backend **out) {
    int n = mm_cuda_device_count();
    if (n == 0) return MM_ERROR(MM_ERR_UNSUPPORTED, "CUDA backend: no GPU found");
    if (device < 0) device = 0;
    if (device >= n) return MM_ERROR(MM_ERR_INVALID, "CUDA device %d of %d", device, n);
    mm_backend *be = (mm_backend *)calloc(1, sizeof *be);
    CHECK(CHECK_ALLOC(be));
    be->ops = &cuda_ops;
    be->n_threads = 1;
    be->ctx = calloc(1, sizeof(cuda_backend_state));
    if (!be->ctx) {
        free(be);
        return MM_ERROR(MM_ERR_NOMEM, "CUDA backend context");
    }
    mm_status s = ctx_create(be, device);
    if (s != MM_OK) {
        cuda_free(be);
        return s;
    }
    *out = be;
    return MM_OK;
}

extern "C" void *mm_backend_cuda_stream(mm_backend *be) {
    return be && be->ops == &cuda_ops ? (void *)mm_cuda_ctx_of(be)->stream : NULL;
}

extern "C" mm_status mm_backend_cuda_sync(mm_backend *be) {
    if (be && be->ops == &cuda_ops) CUDA_CHECK(cudaStreamSynchronize(mm_cuda_ctx_of(be)->stream));
    return MM_OK;
}

extern "C" mm_status mm_backend_cuda_mem(mm_backend *be, mm_cuda_mem *out) {
    if (!be || be->ops != &cuda_ops) return MM_ERROR(MM_ERR_INVALID, "not a CUDA backend");
    mm_cuda_ctx *c = mm_cuda_ctx_of(be);
    memset(out, 0, sizeof *out);
    CUDA_CHECK(cudaMemGetInfo(&out->free, &out->total));
    out->weights = c->weight_bytes, out->allocated = c->alloc_bytes, out->scratch = c->scratch_cap;
    return MM_OK;
}

extern "C" mm_status mm_cuda_plan_kv_blocks(mm_backend *be, double fraction, size_t reserve, size_t block_bytes,
                                            int32_t min_blocks, int32_t *n_blocks) {
    mm_cuda_mem m;
    CHECK(mm_backend_cuda_mem(be, &m));
    if (!(fraction > 0.0 && fraction <= 1.0) || block_bytes == 0)
        return MM_ERROR(MM_ERR_INVALID, "KV planner: fraction %.3f must be in (0, 1], block bytes > 0", fraction);
    double usable = (double)m.free * fraction - (double)reserve;
    double n = usable > 0 ? usable / (double)block_bytes : 0.0;
    if (n > (double)INT32_MAX) n = (double)INT32_MAX;
    if (n < (double)min_blocks)
        return MM_ERROR(MM_ERR_NOMEM, "KV cache does not fit on GPU %d: %d blocks of %.2f MiB need %.1f MiB, but %.1f "
                        "MiB free (of %.1f; weights %.1f MiB) x fraction %.2f - %.1f MiB reserved for activations "
                        "leaves %.1f MiB", mm_cuda_ctx_of(be)->device, min_blocks, MIB(block_bytes),
                        MIB((double)min_blocks * block_bytes), MIB(m.free), MIB(m.total), MIB(m.weights), fraction,
                        MIB(reserve), MIB(usable > 0 ? usable : 0));
    *n_blocks = (int32_t)n;
    return MM_OK;
}
