/* Quantization kernels for bf16 weights: bit for bit the torch kernels of quant/fp8.py and quant/nvfp4.py.
 *
 * Every function takes Python buffers (numpy arrays: bf16 values as uint16 bit patterns, uint8 outputs), checks
 * their item sizes and lengths (ValueError on misuse) and releases the GIL while it runs. The fp32 operations are
 * those of the torch kernels, in the same order (build with -ffp-contract=off and never -ffast-math): a fused or
 * reordered operation would round differently. The E4M3 encoding and decoding are c10's (Float8_e4m3fn.h).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <math.h>
#include <string.h>

#define BLOCK 16
#define E4M3_MAX 448.0f
#define E2M1_MAX 6.0f
#define ZERO_BLOCK_SCALE 0.125f /* the scale of a block whose own rounds to zero */

static inline float from_bits(uint32_t bits) {
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

static inline uint32_t to_bits(float value) {
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    return bits;
}

static inline float bf16_value(uint16_t bits) { return from_bits((uint32_t)bits << 16); }

/* torch's clamp: NaN passes through */
static inline float clamp(float value, float low, float high) {
    value = value < low ? low : value;
    return value > high ? high : value;
}

/* The kernels are built for the baseline ISA and, on x86-64 with GCC, also for AVX2 and AVX-512 (x86-64-v3, v4),
 * chosen at load time by the CPU (the same operations, so the same bits). Measured on one 1856 x 2688 expert, each
 * version built alone: AVX2 and AVX-512 ran FP8 at 1.9x and 3.0x, NVFP4 at 1.16x and 2.0x the SSE2 version's speed. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
#define VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define VECTOR_CLONES
#endif

/* values worked on at a time, in fp32 (4 KiB: the work stays in the L1 cache from step to step); every step is a
 * simple loop over a chunk, which the compiler turns into vector instructions */
#define CHUNK 1024

/* a chunk of fp32 values and their bit patterns */
typedef union {
    float value[CHUNK];
    uint32_t bits[CHUNK];
} Work;

/* c10::detail::fp8e4m3fn_from_fp32_value of `count` values: round to nearest even, anything from 480 up (and
 * NaN) to NaN (0x7F with the sign); `scratch` is overwritten */
static inline void e4m3_codes(const Work *work, Py_ssize_t count, Work *scratch, uint8_t *codes) {
    const uint32_t denormal_offset = UINT32_C(141) << 23;
    for (Py_ssize_t i = 0; i < count; i++) {
        scratch->value[i] = fabsf(work->value[i]) + from_bits(denormal_offset);
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        const uint32_t sign = work->bits[i] & UINT32_C(0x80000000);
        const uint32_t magnitude = work->bits[i] ^ sign;
        const uint32_t denormal = scratch->bits[i] - denormal_offset;
        const uint32_t rounded = magnitude + ((uint32_t)(7 - 127) << 23) + UINT32_C(0x7FFFF) + ((magnitude >> 20) & 1);
        const uint32_t normal = rounded >> 20;
        uint32_t code = magnitude < (UINT32_C(121) << 23) ? denormal : normal;
        code = magnitude >= (UINT32_C(1087) << 20) ? 0x7F : code;
        codes[i] = (uint8_t)((code & 0xFF) | (sign >> 24));
    }
}

/* c10::detail::fp8e4m3fn_to_fp32_value (NaN codes give c10's NaN bit patterns) */
static float e4m3_value(uint8_t code) {
    const uint32_t word = (uint32_t)code << 24;
    const uint32_t sign = word & UINT32_C(0x80000000);
    const uint32_t nonsign = word & UINT32_C(0x7FFFFFFF);
    uint32_t shift = nonsign ? (uint32_t)__builtin_clz(nonsign) : 32;
    shift = shift > 4 ? shift - 4 : 0;
    const int32_t inf_nan_mask = ((int32_t)(nonsign + UINT32_C(0x01000000)) >> 8) & INT32_C(0x7F800000);
    const int32_t zero_mask = (int32_t)(nonsign - 1) >> 31;
    return from_bits(sign | ((((nonsign << shift >> 4) + ((UINT32_C(0x78) - shift) << 23)) | (uint32_t)inf_nan_mask)
                             & ~(uint32_t)zero_mask));
}

/* the value of every E4M3 code, and the code of an all-zero block's scale (0.125), made at import */
static float e4m3_values[256];
static uint8_t zero_block_code;

/* The 4-bit E2M1 code (sign << 3 | magnitude index) of an fp32 value by its bit pattern, as quant/nvfp4.py's table
 * gives it: the nearest of 0, 0.5, 1, 1.5, 2, 3, 4, 6 (clamped at 6) with ties to the even index, the sign bit set
 * for values below zero (not for -0); NaN gives 7. Magnitudes compare as their bit patterns (integer compares, which
 * the compiler vectorizes; a NaN's pattern is above every number's). */
static inline uint32_t e2m1_code(uint32_t bits) {
    const int32_t magnitude = (int32_t)(bits & UINT32_C(0x7FFFFFFF));
    const uint32_t index = (uint32_t)(magnitude > 0x3E800000) + (uint32_t)(magnitude >= 0x3F400000) /* 0.25, 0.75 */
                           + (uint32_t)(magnitude > 0x3FA00000) + (uint32_t)(magnitude >= 0x3FE00000) /* 1.25, 1.75 */
                           + (uint32_t)(magnitude > 0x40200000) + (uint32_t)(magnitude >= 0x40600000) /* 2.5, 3.5 */
                           + (uint32_t)(magnitude > 0x40A00000); /* 5 */
    /* the sign bit of a value below zero: not of -0 or a NaN */
    const uint32_t negative = (bits >> 31) & (uint32_t)(magnitude > 0) & (uint32_t)(magnitude <= 0x7F800000);
    return index | (negative << 3);
}

/* ----- buffers --------------------------------------------------------------------------------------------- */

/* Get a C-contiguous buffer of `itemsize`-byte unsigned integers ("H" or "B"); ValueError names `what`. */
static int get_buffer(PyObject *object, Py_buffer *view, Py_ssize_t itemsize, int writable, const char *what) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(object, view, flags) < 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s must be a C-contiguous%s buffer of %s", what, writable ? " writable" : "",
                     itemsize == 2 ? "uint16 (bf16 bit patterns)" : "uint8");
        return -1;
    }
    const char *format = view->format ? view->format : "B";
    if (format[0] == '<' || format[0] == '=' || format[0] == '@') {
        format++;
    }
    const char *expected = itemsize == 2 ? "H" : "B";
    if (view->itemsize != itemsize || strcmp(format, expected) != 0) {
        PyErr_Format(PyExc_ValueError, "%s must hold %s, not items of format '%s'", what,
                     itemsize == 2 ? "uint16 (bf16 bit patterns)" : "uint8", view->format ? view->format : "B");
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static Py_ssize_t items(const Py_buffer *view) { return view->len / view->itemsize; }

static int check_length(const Py_buffer *view, Py_ssize_t expected, const char *what) {
    if (items(view) != expected) {
        PyErr_Format(PyExc_ValueError, "%s holds %zd items, expected %zd", what, items(view), expected);
        return -1;
    }
    return 0;
}

/* ----- abs_max ----------------------------------------------------------------------------------------------- */

/* fp8.abs_max: the largest magnitude of bf16 values as fp32; NaN (the canonical quiet NaN) when any value is NaN;
 * +0 for an all-zero tensor, whatever the signs of its zeros (as fp8.abs_max gives it). */
VECTOR_CLONES static float abs_max(const uint16_t *values, Py_ssize_t count) {
    int16_t largest = 0; /* magnitudes fit in int16: SSE2 has a signed 16-bit max */
    for (Py_ssize_t i = 0; i < count; i++) {
        const int16_t magnitude = (int16_t)(values[i] & 0x7FFF);
        largest = magnitude > largest ? magnitude : largest;
    }
    if (largest > 0x7F80) {
        return from_bits(UINT32_C(0x7FC00000));
    }
    return bf16_value((uint16_t)largest);
}

static PyObject *py_abs_max(PyObject *self, PyObject *args) {
    PyObject *object;
    Py_buffer view;
    if (!PyArg_ParseTuple(args, "O:bf16_abs_max", &object) || get_buffer(object, &view, 2, 0, "values") < 0) {
        return NULL;
    }
    if (items(&view) == 0) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "values is empty: an empty tensor has no largest magnitude");
        return NULL;
    }
    float result;
    Py_BEGIN_ALLOW_THREADS
    result = abs_max((const uint16_t *)view.buf, items(&view));
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    return PyFloat_FromDouble((double)result);
}

/* ----- FP8 --------------------------------------------------------------------------------------------------- */

/* fp8.quantize: E4M3(clamp(w / scale, -448, 448)) */
VECTOR_CLONES static void fp8_codes(const uint16_t *values, Py_ssize_t count, float scale, uint8_t *codes) {
    Work work, scratch;
    for (Py_ssize_t start = 0; start < count; start += CHUNK) {
        const uint16_t *chunk = values + start;
        const Py_ssize_t size = count - start < CHUNK ? count - start : CHUNK;
        for (Py_ssize_t i = 0; i < size; i++) {
            work.bits[i] = (uint32_t)chunk[i] << 16;
        }
        for (Py_ssize_t i = 0; i < size; i++) {
            work.value[i] = clamp(work.value[i] / scale, -E4M3_MAX, E4M3_MAX);
        }
        e4m3_codes(&work, size, &scratch, codes + start);
    }
}

static PyObject *py_fp8(PyObject *self, PyObject *args) {
    PyObject *values_object, *codes_object;
    float scale;
    Py_buffer values, codes;
    if (!PyArg_ParseTuple(args, "OfO:fp8_quantize", &values_object, &scale, &codes_object)) {
        return NULL;
    }
    if (get_buffer(values_object, &values, 2, 0, "values") < 0) {
        return NULL;
    }
    if (get_buffer(codes_object, &codes, 1, 1, "codes") < 0) {
        PyBuffer_Release(&values);
        return NULL;
    }
    if (check_length(&codes, items(&values), "codes") == 0) {
        Py_BEGIN_ALLOW_THREADS
        fp8_codes((const uint16_t *)values.buf, items(&values), scale, (uint8_t *)codes.buf);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&values);
    PyBuffer_Release(&codes);
    if (PyErr_Occurred()) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* ----- NVFP4 ------------------------------------------------------------------------------------------------- */

/* nvfp4.block_scales and nvfp4.quantize, a chunk of blocks of 16 at a time: each block's amax (its largest
 * sign-cleared bit pattern), its scale E4M3(clamp(g * (amax / 6), -448, 448)) (0.125 for one that rounds to zero),
 * the step scale / g, and E2M1(w / step) packed two a byte, the even column in the low nibble. */
VECTOR_CLONES static void nvfp4_codes(const uint16_t *values, Py_ssize_t blocks, float global_scale,
                                      uint8_t *packed, uint8_t *scales) {
    enum { CHUNK_BLOCKS = CHUNK / BLOCK };
    Work work, scratch, block_scales;
    float steps[CHUNK_BLOCKS];
    for (Py_ssize_t first = 0; first < blocks; first += CHUNK_BLOCKS) {
        const uint16_t *chunk = values + first * BLOCK;
        uint8_t *chunk_scales = scales + first;
        const Py_ssize_t count = blocks - first < CHUNK_BLOCKS ? blocks - first : CHUNK_BLOCKS;
        for (Py_ssize_t b = 0; b < count; b++) {
            int16_t largest = 0; /* magnitudes fit in int16: SSE2 has a signed 16-bit max */
            for (int i = 0; i < BLOCK; i++) {
                const int16_t magnitude = (int16_t)(chunk[b * BLOCK + i] & 0x7FFF);
                largest = magnitude > largest ? magnitude : largest;
            }
            block_scales.bits[b] = (uint32_t)(uint16_t)largest << 16;
        }
        for (Py_ssize_t b = 0; b < count; b++) {
            block_scales.value[b] = clamp(global_scale * (block_scales.value[b] / E2M1_MAX), -E4M3_MAX, E4M3_MAX);
        }
        e4m3_codes(&block_scales, count, &scratch, chunk_scales);
        for (Py_ssize_t b = 0; b < count; b++) {
            chunk_scales[b] = (chunk_scales[b] & 0x7F) == 0 ? zero_block_code : chunk_scales[b];
            steps[b] = e4m3_values[chunk_scales[b]] / global_scale;
        }
        for (Py_ssize_t i = 0; i < count * BLOCK; i++) {
            work.bits[i] = (uint32_t)chunk[i] << 16;
        }
        for (Py_ssize_t b = 0; b < count; b++) {
            for (int i = 0; i < BLOCK; i++) {
                work.value[b * BLOCK + i] = work.value[b * BLOCK + i] / steps[b];
            }
        }
        for (Py_ssize_t i = 0; i < count * BLOCK; i++) {
            work.bits[i] = e2m1_code(work.bits[i]);
        }
        uint8_t *chunk_packed = packed + first * (BLOCK / 2);
        for (Py_ssize_t i = 0; i < count * (BLOCK / 2); i++) {
            chunk_packed[i] = (uint8_t)(work.bits[2 * i] | (work.bits[2 * i + 1] << 4));
        }
    }
}

static PyObject *py_nvfp4(PyObject *self, PyObject *args) {
    PyObject *values_object, *packed_object, *scales_object;
    float global_scale;
    Py_buffer values, packed, scales;
    if (!PyArg_ParseTuple(args, "OfOO:nvfp4_quantize", &values_object, &global_scale, &packed_object,
                          &scales_object)) {
        return NULL;
    }
    if (get_buffer(values_object, &values, 2, 0, "values") < 0) {
        return NULL;
    }
    if (get_buffer(packed_object, &packed, 1, 1, "packed") < 0) {
        PyBuffer_Release(&values);
        return NULL;
    }
    if (get_buffer(scales_object, &scales, 1, 1, "scales") < 0) {
        PyBuffer_Release(&values);
        PyBuffer_Release(&packed);
        return NULL;
    }
    const Py_ssize_t count = items(&values);
    if (count % BLOCK) {
        PyErr_Format(PyExc_ValueError, "values holds %zd items, not a whole number of blocks of %d", count, BLOCK);
    } else if (check_length(&packed, count / 2, "packed") == 0
               && check_length(&scales, count / BLOCK, "scales") == 0) {
        Py_BEGIN_ALLOW_THREADS
        nvfp4_codes((const uint16_t *)values.buf, count / BLOCK, global_scale, (uint8_t *)packed.buf,
                    (uint8_t *)scales.buf);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&values);
    PyBuffer_Release(&packed);
    PyBuffer_Release(&scales);
    if (PyErr_Occurred()) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* ----- module ------------------------------------------------------------------------------------------------ */

static PyMethodDef methods[] = {
    {"bf16_abs_max", py_abs_max, METH_VARARGS, "bf16_abs_max(values) -> float: fp8.abs_max of bf16 bit patterns."},
    {"fp8_quantize", py_fp8, METH_VARARGS,
     "fp8_quantize(values, scale, codes): E4M3 codes of bf16 bit patterns under an fp32 scale, into codes."},
    {"nvfp4_quantize", py_nvfp4, METH_VARARGS,
     "nvfp4_quantize(values, global_scale, packed, scales): packed E2M1 codes and E4M3 block scales of bf16 bit "
     "patterns (blocks of 16) under an fp32 global scale, into packed and scales."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_kernels",
    "Quantization kernels for bf16 weights, bit for bit those of quant/fp8.py and quant/nvfp4.py.", -1, methods,
};

PyMODINIT_FUNC PyInit__kernels(void) {
    PyObject *result = PyModule_Create(&module);
    if (result == NULL) {
        return NULL;
    }
    for (int code = 0; code < 256; code++) {
        e4m3_values[code] = e4m3_value((uint8_t)code);
    }
    static Work work, scratch;
    work.value[0] = ZERO_BLOCK_SCALE;
    e4m3_codes(&work, 1, &scratch, &zero_block_code);
    /* the code of every fp32 value by its top 11 bits and whether a lower bit is set (nvfp4._CODES' layout):
     * tests compare it with the torch table entry by entry */
    uint8_t table[4096];
    for (uint32_t top = 0; top < 2048; top++) {
        table[2 * top] = (uint8_t)e2m1_code(top << 21);
        table[2 * top + 1] = (uint8_t)e2m1_code((top << 21) | 1);
    }
    PyObject *codes = PyBytes_FromStringAndSize((const char *)table, sizeof table);
    const int added = codes == NULL ? -1 : PyModule_AddObjectRef(result, "E2M1_CODES", codes);
    Py_XDECREF(codes);
    if (added < 0) {
        Py_DECREF(result);
        return NULL;
    }
    return result;
}
