/*
 * A stand-in libnvidia-ml.so.1 for the test suite: the NVML entry points the agent's
 * NVML source uses, with the symbol names and struct layouts pynvml 13.x expects,
 * driven by a scenario file instead of hardware.
 *
 * Build:  gcc -shared -fPIC -O2 -o libnvidia-ml.so.1 fake_nvml.c
 *         (-DFAKE_NVML_LEGACY leaves out nvmlDeviceGetCurrentClocksEventReasons, like a
 *          driver older than R535.)
 *
 * The scenario file is named by the environment variable FAKE_NVML_SCENARIO and read
 * when the first nvmlInit* call of a session starts NVML (init is reference-counted, as
 * in the real library). Unset: NVML starts with no GPUs. Unreadable or malformed: init
 * fails with NVML_ERROR_UNKNOWN and a message on stderr.
 *
 * Scenario format: one directive per line; '#' starts a comment; tokens are separated by
 * blanks; a value may be double-quoted to hold blanks. <gpu> is the 0-based position of
 * a `gpu` line. Codes are nvmlReturn_t numbers (3 NOT_SUPPORTED, 15 GPU_IS_LOST, ...).
 *
 *   gpu <uuid> [key=value ...]         a GPU; keys (defaults in brackets):
 *       name="NVIDIA H100 80GB HBM3"   device name ["Fake GPU"]
 *       sm_clock=<MHz>                 current SM clock [1000]
 *       max_sm_clock=<MHz>             max SM (and graphics) clock [sm_clock]
 *       util=<percent>                 utilization.gpu [0]; mem_util=<percent> [0]
 *       energy_start_mj=<mJ>           energy counter before the first read [0]
 *       energy_step_mj=<mJ>            added to the energy counter on every read [0]
 *       power_mw=<mW>                  power draw [0]
 *       event_reasons=<bitmask>        clock-event reasons, decimal or 0x.. [0]
 *       gpm=0|1                        GPM supported [0]
 *       any_tensor= hmma= imma= dmma= dfma= fp16= fp32= fp64= sm_util= sm_occupancy=
 *                                      GPM metric values (percent) [0]
 *       pci_device_id=<16-bit id>      PCI device ID; pciDeviceId reads (id << 16) |
 *                                      0x10DE [unset: NOT_SUPPORTED]
 *       cc=<major>.<minor>             CUDA compute capability [unset: NOT_SUPPORTED]
 *       sm_count=<n>                   nvmlDeviceGetAttributes_v2 multiprocessorCount
 *                                      [unset: NOT_SUPPORTED, as NVML answers for
 *                                      anything but a MIG device]
 *       mig=0|1 mig_pending=0|1        current and pending MIG mode [unset:
 *                                      NOT_SUPPORTED; pending defaults to current]
 *       mig_max=<n>                    nvmlDeviceGetMaxMigDeviceCount when MIG is on [7]
 *   mig <gpu> <uuid> [key=value ...]   a MIG device (compute instance) of GPU <gpu>,
 *                                      numbered <gpu>/<m> by the order of its GPU's
 *                                      `mig` lines; keys:
 *       profile=3g.20gb                its name is "<GPU name> MIG <profile>" ["1g.5gb"]
 *       name="..."                     its name, instead of the one made from profile
 *       gi=<id> ci=<id>                GPU and compute instance IDs [gi=<m+1>, ci=0]
 *       sm_count=<n>                   multiprocessorCount [14]
 *       present=0|1                    exists now [1]; see fakeNvml_setMigPresent()
 *       any_tensor= ... sm_occupancy=  GPM values of its GPU instance, as for a GPU;
 *                                      when several MIG devices share a GPU instance,
 *                                      the first one's values are the instance's
 *   metric <dev> <metric_id> <value> [ret=<code>]
 *                                      any GPM metric by id, optionally failing with
 *                                      its own nvmlReturn code
 *   unsupported <dev> <field>          <field> returns NOT_SUPPORTED (3)
 *   error <dev> <field> <code>         <field> returns <code>
 *       fields: name uuid max_clock clock util energy power event_reasons
 *               throttle_reasons processes process_util gpm_support gpm_sample
 *               gpm_metrics pci cc attributes mig_mode mig_devices instance_ids
 *   lost <dev> after_reads=<n>         the device is lost once read n times: its
 *                                      (n+1)-th read and every call after it return
 *                                      GPU_IS_LOST (15). A GPU's reads are its
 *                                      nvmlDeviceGetClockInfo calls, a MIG device's its
 *                                      nvmlDeviceGetComputeRunningProcesses_v3 sizing
 *                                      calls. A lost GPU takes its MIG devices with it.
 *   process <dev> <pid> <mem_bytes|-> <sm_util|->
 *                                      a compute process; '-' memory is
 *                                      NVML_VALUE_NOT_AVAILABLE, '-' util means no
 *                                      per-process utilization sample
 *   count_error <code>                 nvmlDeviceGetCount_v2 fails with <code>
 *   init_error <code>                  nvmlInitWithFlags fails with <code>
 *
 * <gpu> is a GPU's position; <dev> is a GPU's position or <gpu>/<m>, MIG device m of it.
 *
 * MIG as NVML has it (nvml.h, and what nvidia-smi shows on MIG GPUs): a MIG device
 * handle answers NOT_SUPPORTED for clocks, utilization, energy, power, clock-event
 * reasons, per-process utilization and its own MIG mode; a GPU with MIG on answers
 * NOT_SUPPORTED for utilization and per-process utilization. GPM of a GPU instance is
 * read with nvmlGpmMigSampleGet(<parent handle>, <GPU instance ID>, ...).
 * nvmlDeviceGetMigDeviceHandleByIndex numbers the MIG devices present now, so indices
 * move when one goes away. The handle of a MIG device that is no longer present
 * answers INVALID_ARGUMENT, as a handle that must be requested again.
 *
 * Per-process utilization samples carry the timestamp reads*1e6 (microseconds), so a
 * caller that passes the newest timestamp it has seen gets NOT_FOUND until the next read.
 *
 * A lost GPU stays lost until fakeNvml_resetGpu(<gpu>) (a driver reset) and a new handle
 * is fetched for it (nvmlDeviceGetHandleByUUID or _ByIndex_v2): handles from before the
 * reset keep answering GPU_IS_LOST until then, as stale handles do.
 *
 * Test hooks (not NVML): fakeNvml_liveGpmSamples(), fakeNvml_gpmStats(), fakeNvml_refcount(),
 * fakeNvml_resetGpu(), fakeNvml_uuidLookups(), fakeNvml_setMigPresent(),
 * fakeNvml_setMigMode(), fakeNvml_resetMig(), fakeNvml_migGpmStats().
 */

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int nvmlReturn_t;

enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_GPU_IS_LOST = 15,
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25,
    NVML_ERROR_UNKNOWN = 999,
};

#define MAX_GPUS 64
#define MAX_MIG 64
#define MAX_PROCS 64
#define GPM_METRIC_MAX 477 /* NVML_GPM_METRIC_MAX in pynvml 13.x */
#define NAME_LEN 96        /* NVML_DEVICE_NAME_V2_BUFFER_SIZE / UUID_V2 */
#define DEVICE_MAGIC 0x4e564d4cu
#define SAMPLE_MAGIC 0x47504d53u

enum field {
    F_NAME, F_UUID, F_MAX_CLOCK, F_CLOCK, F_UTIL, F_ENERGY, F_POWER, F_EVENT_REASONS,
    F_THROTTLE_REASONS, F_PROCESSES, F_PROCESS_UTIL, F_GPM_SUPPORT, F_GPM_SAMPLE,
    F_GPM_METRICS, F_PCI, F_CC, F_ATTRIBUTES, F_MIG_MODE, F_MIG_DEVICES, F_INSTANCE_IDS,
    F_COUNT
};

static const char *const field_names[F_COUNT] = {
    "name", "uuid", "max_clock", "clock", "util", "energy", "power", "event_reasons",
    "throttle_reasons", "processes", "process_util", "gpm_support", "gpm_sample",
    "gpm_metrics", "pci", "cc", "attributes", "mig_mode", "mig_devices", "instance_ids",
};

struct fake_process {
    unsigned pid;
    unsigned long long mem_bytes;
    int sm_util; /* -1: no utilization sample */
};

/* What an nvmlDevice_t points at. */
struct fake_device {
    unsigned magic;
    char uuid[NAME_LEN];
    char name[NAME_LEN];
    unsigned sm_clock, max_sm_clock, util, mem_util, power_mw;
    unsigned long long energy_mj, energy_step_mj, event_reasons;
    int gpm;
    double metric_value[GPM_METRIC_MAX];
    int metric_ret[GPM_METRIC_MAX];
    nvmlReturn_t fail[F_COUNT];
    long long lost_after; /* -1: never */
    int lost;
    int reset; /* reset since it was lost: the next handle fetch brings it back */
    unsigned long long uuid_lookups; /* nvmlDeviceGetHandleByUUID calls, answered or not */
    unsigned long long reads; /* nvmlDeviceGetClockInfo calls */
    struct fake_process procs[MAX_PROCS];
    int nprocs;
    unsigned long long gpm_seq, gpm_metrics_calls, last_seq1, last_seq2;
    unsigned pci_device;       /* 16-bit PCI device ID, 0: unset */
    int cc_major, cc_minor;    /* -1: unset */
    unsigned sm_count;         /* 0: unset */
    int mig_mode, mig_pending; /* -1: unset (no MIG support) */
    unsigned mig_max;
    /* A MIG device: */
    int is_mig;
    struct fake_device *parent;
    int present;
    unsigned gi, ci, slices;
};

/* What an nvmlGpmSample_t points at: opaque to callers. */
struct fake_gpm_sample {
    unsigned magic;
    struct fake_device *device; /* NULL until nvmlGpmSampleGet fills it */
    unsigned long long seq;     /* the device's sample count when it was taken */
};

/* Layouts as pynvml declares them (ctypes follows the C ABI, so these match). */
typedef struct fake_device *nvmlDevice_t;
typedef struct fake_gpm_sample *nvmlGpmSample_t;
typedef struct { unsigned gpu, memory; } nvmlUtilization_t;
typedef struct {
    unsigned pid;
    unsigned long long usedGpuMemory;
    unsigned gpuInstanceId, computeInstanceId;
} nvmlProcessInfo_t;
typedef struct {
    unsigned pid;
    unsigned long long timeStamp;
    unsigned smUtil, memUtil, encUtil, decUtil;
} nvmlProcessUtilizationSample_t;
typedef struct { unsigned version, isSupportedDevice; } nvmlGpmSupport_t;
typedef struct {
    char busIdLegacy[16];
    unsigned domain, bus, device, pciDeviceId, pciSubSystemId;
    char busId[32];
} nvmlPciInfo_t;
typedef struct {
    unsigned multiprocessorCount, sharedCopyEngineCount, sharedDecoderCount,
        sharedEncoderCount, sharedJpegCount, sharedOfaCount, gpuInstanceSliceCount,
        computeInstanceSliceCount;
    unsigned long long memorySizeMB;
} nvmlDeviceAttributes_t;
typedef struct {
    unsigned metricId;
    nvmlReturn_t nvmlReturn;
    double value;
    struct { const char *shortName, *longName, *unit; } metricInfo;
} nvmlGpmMetric_t;
typedef struct {
    unsigned version, numMetrics;
    nvmlGpmSample_t sample1, sample2;
    nvmlGpmMetric_t metrics[GPM_METRIC_MAX];
} nvmlGpmMetricsGet_t;

static struct fake_device devices[MAX_GPUS];
static unsigned device_count;
static struct fake_device mig_devices[MAX_MIG]; /* in scenario order */
static unsigned mig_count;
static int refcount;
static nvmlReturn_t count_error;
static int live_samples;

/* ---- scenario parsing ------------------------------------------------------------- */

/* Splits a line into tokens in place; a double-quoted run keeps its blanks. */
static int tokenize(char *line, char **tokens, int max) {
    int n = 0;
    char *p = line, *out;
    while (*p) {
        while (isspace((unsigned char)*p)) p++;
        if (!*p || *p == '#') break;
        if (n == max) return -1;
        tokens[n++] = out = p;
        int quoted = 0;
        while (*p && (quoted || !isspace((unsigned char)*p))) {
            if (*p == '"') { quoted = !quoted; p++; continue; }
            *out++ = *p++;
        }
        if (*p) p++;
        *out = '\0';
    }
    return n;
}

static int parse_ull(const char *s, unsigned long long *out) {
    char *end;
    errno = 0;
    *out = strtoull(s, &end, 0);
    return errno == 0 && *s && !*end;
}

static int parse_double(const char *s, double *out) {
    char *end;
    *out = strtod(s, &end);
    return *s && !*end;
}

static int parse_gpu_index(const char *s, unsigned *out) {
    unsigned long long v;
    if (!parse_ull(s, &v) || v >= device_count) return 0;
    *out = (unsigned)v;
    return 1;
}

/* "<gpu>" or "<gpu>/<m>": a GPU, or the m-th `mig` line of that GPU. */
static int parse_device(const char *s, struct fake_device **out) {
    char head[32];
    const char *slash = strchr(s, '/');
    unsigned g;
    if (!slash) {
        if (!parse_gpu_index(s, &g)) return 0;
        *out = &devices[g];
        return 1;
    }
    if ((size_t)(slash - s) >= sizeof head) return 0;
    memcpy(head, s, (size_t)(slash - s));
    head[slash - s] = '\0';
    unsigned long long m;
    if (!parse_gpu_index(head, &g) || !parse_ull(slash + 1, &m)) return 0;
    for (unsigned i = 0; i < mig_count; i++) {
        if (mig_devices[i].parent != &devices[g]) continue;
        if (m-- == 0) {
            *out = &mig_devices[i];
            return 1;
        }
    }
    return 0;
}

static int field_index(const char *s) {
    for (int i = 0; i < F_COUNT; i++)
        if (strcmp(s, field_names[i]) == 0) return i;
    return -1;
}

static const struct { const char *key; unsigned id; } metric_keys[] = {
    {"sm_util", 2}, {"sm_occupancy", 3}, {"any_tensor", 5}, {"dfma", 6}, {"hmma", 7},
    {"dmma", 8},    {"imma", 9},         {"fp64", 11},      {"fp32", 12}, {"fp16", 13},
};

/* Keys a GPU and a MIG device both take: name and GPM metric values. 1 if taken, 0 if
 * bad, -1 if not one of them. */
static int set_common_key(struct fake_device *d, const char *key, const char *value) {
    double f;
    if (strcmp(key, "name") == 0) {
        if (strlen(value) >= NAME_LEN) return 0;
        strcpy(d->name, value);
        return 1;
    }
    for (size_t i = 0; i < sizeof metric_keys / sizeof metric_keys[0]; i++) {
        if (strcmp(key, metric_keys[i].key) == 0) {
            if (!parse_double(value, &f)) return 0;
            d->metric_value[metric_keys[i].id] = f;
            return 1;
        }
    }
    return -1;
}

static int set_gpu_key(struct fake_device *d, const char *key, const char *value) {
    unsigned long long u;
    int common = set_common_key(d, key, value);
    if (common >= 0) return common;
    if (strcmp(key, "cc") == 0) {
        char *end;
        long major = strtol(value, &end, 10);
        if (end == value || *end != '.') return 0;
        const char *minor_text = end + 1;
        long minor = strtol(minor_text, &end, 10);
        if (end == minor_text || *end || major < 0 || minor < 0) return 0;
        d->cc_major = (int)major;
        d->cc_minor = (int)minor;
        return 1;
    }
    if (!parse_ull(value, &u)) return 0;
    if (strcmp(key, "sm_clock") == 0) d->sm_clock = (unsigned)u;
    else if (strcmp(key, "max_sm_clock") == 0) d->max_sm_clock = (unsigned)u;
    else if (strcmp(key, "util") == 0) d->util = (unsigned)u;
    else if (strcmp(key, "mem_util") == 0) d->mem_util = (unsigned)u;
    else if (strcmp(key, "energy_start_mj") == 0) d->energy_mj = u;
    else if (strcmp(key, "energy_step_mj") == 0) d->energy_step_mj = u;
    else if (strcmp(key, "power_mw") == 0) d->power_mw = (unsigned)u;
    else if (strcmp(key, "event_reasons") == 0) d->event_reasons = u;
    else if (strcmp(key, "gpm") == 0) d->gpm = u != 0;
    else if (strcmp(key, "pci_device_id") == 0 && u > 0 && u <= 0xFFFF) d->pci_device = (unsigned)u;
    else if (strcmp(key, "sm_count") == 0) d->sm_count = (unsigned)u;
    else if (strcmp(key, "mig") == 0 && u <= 1) d->mig_mode = (int)u;
    else if (strcmp(key, "mig_pending") == 0 && u <= 1) d->mig_pending = (int)u;
    else if (strcmp(key, "mig_max") == 0) d->mig_max = (unsigned)u;
    else return 0;
    return 1;
}

static int set_mig_key(struct fake_device *d, const char *key, const char *value) {
    unsigned long long u;
    int common = set_common_key(d, key, value);
    if (common >= 0) return common;
    if (strcmp(key, "profile") == 0) {
        /* "<g>g.<memory>": g compute slices */
        if (!isdigit((unsigned char)value[0])) return 0;
        d->slices = (unsigned)strtoul(value, NULL, 10);
        if (strlen(d->parent->name) + strlen(value) + 6 >= NAME_LEN) return 0;
        strcpy(d->name, d->parent->name);
        strcat(d->name, " MIG ");
        strcat(d->name, value);
        return 1;
    }
    if (!parse_ull(value, &u)) return 0;
    if (strcmp(key, "gi") == 0) d->gi = (unsigned)u;
    else if (strcmp(key, "ci") == 0) d->ci = (unsigned)u;
    else if (strcmp(key, "sm_count") == 0) d->sm_count = (unsigned)u;
    else if (strcmp(key, "present") == 0 && u <= 1) d->present = (int)u;
    else return 0;
    return 1;
}

static void init_device(struct fake_device *d, const char *uuid) {
    memset(d, 0, sizeof *d);
    d->magic = DEVICE_MAGIC;
    strcpy(d->uuid, uuid);
    strcpy(d->name, "Fake GPU");
    d->sm_clock = 1000;
    d->lost_after = -1;
    d->cc_major = d->cc_minor = -1;
    d->mig_mode = d->mig_pending = -1;
    d->mig_max = 7;
}

static int parse_line(char **t, int n) {
    unsigned g;
    unsigned long long u;
    double f;
    struct fake_device *dev;
    if (strcmp(t[0], "gpu") == 0 && n >= 2) {
        if (device_count == MAX_GPUS || strlen(t[1]) >= NAME_LEN) return 0;
        struct fake_device *d = &devices[device_count];
        init_device(d, t[1]);
        int max_clock_set = 0;
        for (int i = 2; i < n; i++) {
            char *eq = strchr(t[i], '=');
            if (!eq) return 0;
            *eq = '\0';
            if (!set_gpu_key(d, t[i], eq + 1)) return 0;
            max_clock_set |= strcmp(t[i], "max_sm_clock") == 0;
        }
        if (!max_clock_set) d->max_sm_clock = d->sm_clock;
        if (d->mig_pending < 0) d->mig_pending = d->mig_mode;
        device_count++;
        return 1;
    }
    if (strcmp(t[0], "mig") == 0 && n >= 3 && parse_gpu_index(t[1], &g)) {
        if (mig_count == MAX_MIG || strlen(t[2]) >= NAME_LEN) return 0;
        unsigned siblings = 0;
        for (unsigned i = 0; i < mig_count; i++) siblings += mig_devices[i].parent == &devices[g];
        struct fake_device *d = &mig_devices[mig_count];
        init_device(d, t[2]);
        d->is_mig = 1;
        d->parent = &devices[g];
        d->present = 1;
        d->gi = siblings + 1;
        d->sm_count = 14;
        if (!set_mig_key(d, "profile", "1g.5gb")) return 0;
        const char *name = NULL; /* an explicit name wins over the profile's, in any order */
        for (int i = 3; i < n; i++) {
            char *eq = strchr(t[i], '=');
            if (!eq) return 0;
            *eq = '\0';
            if (strcmp(t[i], "name") == 0) name = eq + 1;
            else if (!set_mig_key(d, t[i], eq + 1)) return 0;
        }
        if (name && !set_mig_key(d, "name", name)) return 0;
        mig_count++;
        return 1;
    }
    if (strcmp(t[0], "unsupported") == 0 && n == 3 && parse_device(t[1], &dev)) {
        int fi = field_index(t[2]);
        if (fi < 0) return 0;
        dev->fail[fi] = NVML_ERROR_NOT_SUPPORTED;
        return 1;
    }
    if (strcmp(t[0], "error") == 0 && n == 4 && parse_device(t[1], &dev) &&
        parse_ull(t[3], &u)) {
        int fi = field_index(t[2]);
        if (fi < 0) return 0;
        dev->fail[fi] = (nvmlReturn_t)u;
        return 1;
    }
    if (strcmp(t[0], "lost") == 0 && n == 3 && parse_device(t[1], &dev) &&
        strncmp(t[2], "after_reads=", 12) == 0 && parse_ull(t[2] + 12, &u)) {
        dev->lost_after = (long long)u;
        return 1;
    }
    if (strcmp(t[0], "process") == 0 && n == 5 && parse_device(t[1], &dev) &&
        parse_ull(t[2], &u)) {
        struct fake_device *d = dev;
        if (d->nprocs == MAX_PROCS) return 0;
        struct fake_process *p = &d->procs[d->nprocs];
        p->pid = (unsigned)u;
        if (strcmp(t[3], "-") == 0) p->mem_bytes = ULLONG_MAX;
        else if (!parse_ull(t[3], &p->mem_bytes)) return 0;
        if (strcmp(t[4], "-") == 0) p->sm_util = -1;
        else if (parse_ull(t[4], &u)) p->sm_util = (int)u;
        else return 0;
        d->nprocs++;
        return 1;
    }
    if (strcmp(t[0], "metric") == 0 && (n == 4 || n == 5) && parse_device(t[1], &dev) &&
        parse_ull(t[2], &u) && u < GPM_METRIC_MAX && parse_double(t[3], &f)) {
        dev->metric_value[u] = f;
        if (n == 5) {
            unsigned long long code;
            if (strncmp(t[4], "ret=", 4) != 0 || !parse_ull(t[4] + 4, &code)) return 0;
            dev->metric_ret[u] = (int)code;
        }
        return 1;
    }
    if (strcmp(t[0], "count_error") == 0 && n == 2 && parse_ull(t[1], &u)) {
        count_error = (nvmlReturn_t)u;
        return 1;
    }
    return strcmp(t[0], "init_error") == 0 && n == 2; /* handled by the caller */
}

/* Loads the scenario; returns the code nvmlInit* should return. */
static nvmlReturn_t load_scenario(void) {
    device_count = 0;
    mig_count = 0;
    count_error = NVML_SUCCESS;
    const char *path = getenv("FAKE_NVML_SCENARIO");
    if (!path || !*path) return NVML_SUCCESS;
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "fake_nvml: cannot open FAKE_NVML_SCENARIO %s\n", path);
        return NVML_ERROR_UNKNOWN;
    }
    char line[4096];
    char *tokens[64];
    int lineno = 0;
    nvmlReturn_t ret = NVML_SUCCESS;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        int n = tokenize(line, tokens, 64);
        if (n == 0) continue;
        if (n < 0 || !parse_line(tokens, n)) {
            fprintf(stderr, "fake_nvml: %s:%d: bad line\n", path, lineno);
            ret = NVML_ERROR_UNKNOWN;
            break;
        }
        unsigned long long code;
        if (strcmp(tokens[0], "init_error") == 0) {
            if (!parse_ull(tokens[1], &code)) {
                fprintf(stderr, "fake_nvml: %s:%d: bad init_error code\n", path, lineno);
                ret = NVML_ERROR_UNKNOWN;
                break;
            }
            ret = (nvmlReturn_t)code;
        }
    }
    fclose(f);
    if (ret != NVML_SUCCESS) device_count = mig_count = 0;
    return ret;
}

/* ---- init and errors -------------------------------------------------------------- */

nvmlReturn_t nvmlInitWithFlags(unsigned flags) {
    (void)flags;
    if (refcount == 0) {
        nvmlReturn_t ret = load_scenario();
        if (ret != NVML_SUCCESS) return ret;
    }
    refcount++;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
nvmlReturn_t nvmlInit(void) { return nvmlInitWithFlags(0); }

nvmlReturn_t nvmlShutdown(void) {
    if (refcount == 0) return NVML_ERROR_UNINITIALIZED;
    refcount--;
    return NVML_SUCCESS;
}

const char *nvmlErrorString(nvmlReturn_t result) {
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    case NVML_ERROR_ARGUMENT_VERSION_MISMATCH: return "Argument version mismatch";
    case NVML_ERROR_UNKNOWN: return "Unknown Error";
    default: return "Fake NVML error";
    }
}

/* ---- devices ---------------------------------------------------------------------- */

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned *count) {
    if (refcount == 0) return NVML_ERROR_UNINITIALIZED;
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    if (count_error != NVML_SUCCESS) return count_error;
    *count = device_count;
    return NVML_SUCCESS;
}

#define NVML_VENDOR_NVIDIA 0x10DEu

/* A fresh handle for a device: one reset since it was lost makes it answer again. */
static nvmlReturn_t fetch_handle(struct fake_device *d, nvmlDevice_t *device) {
    if (d->lost && d->reset) {
        d->lost = 0;
        d->reset = 0;
    }
    *device = d;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned index, nvmlDevice_t *device) {
    if (refcount == 0) return NVML_ERROR_UNINITIALIZED;
    if (!device || index >= device_count) return NVML_ERROR_INVALID_ARGUMENT;
    return fetch_handle(&devices[index], device);
}

nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device) {
    if (refcount == 0) return NVML_ERROR_UNINITIALIZED;
    if (!uuid || !device) return NVML_ERROR_INVALID_ARGUMENT;
    for (unsigned i = 0; i < device_count; i++) {
        if (strcmp(devices[i].uuid, uuid) != 0) continue;
        devices[i].uuid_lookups++;
        if (devices[i].lost && !devices[i].reset) return NVML_ERROR_GPU_IS_LOST;
        return fetch_handle(&devices[i], device);
    }
    return NVML_ERROR_NOT_FOUND;
}

/* Fields a MIG device handle does not answer, and those a GPU with MIG on does not. */
static int mig_device_unsupported(enum field f) {
    switch (f) {
    case F_MAX_CLOCK: case F_CLOCK: case F_UTIL: case F_ENERGY: case F_POWER:
    case F_EVENT_REASONS: case F_THROTTLE_REASONS: case F_PROCESS_UTIL: case F_MIG_MODE:
    case F_MIG_DEVICES: case F_GPM_SUPPORT:
        return 1;
    default:
        return 0;
    }
}

/* The checks every device call makes: initialised, a real handle (a MIG device that is
 * still there), not lost (nor its GPU), the field's scripted failure, then what NVML
 * does not answer for MIG. */
static nvmlReturn_t gate(nvmlDevice_t d, enum field f) {
    if (refcount == 0) return NVML_ERROR_UNINITIALIZED;
    if (!d || d->magic != DEVICE_MAGIC) return NVML_ERROR_INVALID_ARGUMENT;
    if (d->is_mig && !d->present) return NVML_ERROR_INVALID_ARGUMENT;
    if (d->lost || (d->is_mig && d->parent->lost)) return NVML_ERROR_GPU_IS_LOST;
    if (d->fail[f]) return d->fail[f];
    if (d->is_mig && mig_device_unsupported(f)) return NVML_ERROR_NOT_SUPPORTED;
    if (!d->is_mig && d->mig_mode == 1 && (f == F_UTIL || f == F_PROCESS_UTIL))
        return NVML_ERROR_NOT_SUPPORTED;
    return NVML_SUCCESS;
}

/* One read of a device (see `lost`): lost once it has been read lost_after times. */
static nvmlReturn_t count_read(struct fake_device *d) {
    if (d->lost_after >= 0 && d->reads >= (unsigned long long)d->lost_after) {
        d->lost = 1;
        return NVML_ERROR_GPU_IS_LOST;
    }
    d->reads++;
    return NVML_SUCCESS;
}

static nvmlReturn_t copy_string(const char *s, char *out, unsigned length) {
    if (!out) return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(s) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
    strcpy(out, s);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t d, char *name, unsigned length) {
    nvmlReturn_t r = gate(d, F_NAME);
    return r ? r : copy_string(d->name, name, length);
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t d, char *uuid, unsigned length) {
    nvmlReturn_t r = gate(d, F_UUID);
    return r ? r : copy_string(d->uuid, uuid, length);
}

/* nvmlClockType_t: 0 graphics, 1 SM, 2 memory, 3 video. */
nvmlReturn_t nvmlDeviceGetMaxClockInfo(nvmlDevice_t d, unsigned type, unsigned *clock) {
    nvmlReturn_t r = gate(d, F_MAX_CLOCK);
    if (r) return r;
    if (!clock || type > 3) return NVML_ERROR_INVALID_ARGUMENT;
    if (type > 1) return NVML_ERROR_NOT_SUPPORTED;
    *clock = d->max_sm_clock;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetClockInfo(nvmlDevice_t d, unsigned type, unsigned *clock) {
    nvmlReturn_t r = gate(d, F_CLOCK);
    if (r == NVML_ERROR_GPU_IS_LOST || r == NVML_ERROR_UNINITIALIZED ||
        r == NVML_ERROR_INVALID_ARGUMENT)
        return r;
    if (!d->is_mig && count_read(d)) return NVML_ERROR_GPU_IS_LOST;
    /* counted even when the clock itself is scripted to fail */
    if (r) return r;
    if (!clock || type > 3) return NVML_ERROR_INVALID_ARGUMENT;
    if (type > 1) return NVML_ERROR_NOT_SUPPORTED;
    *clock = d->sm_clock;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t d, nvmlUtilization_t *u) {
    nvmlReturn_t r = gate(d, F_UTIL);
    if (r) return r;
    if (!u) return NVML_ERROR_INVALID_ARGUMENT;
    u->gpu = d->util;
    u->memory = d->mem_util;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetTotalEnergyConsumption(nvmlDevice_t d, unsigned long long *mj) {
    nvmlReturn_t r = gate(d, F_ENERGY);
    if (r) return r;
    if (!mj) return NVML_ERROR_INVALID_ARGUMENT;
    d->energy_mj += d->energy_step_mj;
    *mj = d->energy_mj;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t d, unsigned *mw) {
    nvmlReturn_t r = gate(d, F_POWER);
    if (r) return r;
    if (!mw) return NVML_ERROR_INVALID_ARGUMENT;
    *mw = d->power_mw;
    return NVML_SUCCESS;
}

#ifndef FAKE_NVML_LEGACY
nvmlReturn_t nvmlDeviceGetCurrentClocksEventReasons(nvmlDevice_t d, unsigned long long *r_out) {
    nvmlReturn_t r = gate(d, F_EVENT_REASONS);
    if (r) return r;
    if (!r_out) return NVML_ERROR_INVALID_ARGUMENT;
    *r_out = d->event_reasons;
    return NVML_SUCCESS;
}
#endif

nvmlReturn_t nvmlDeviceGetCurrentClocksThrottleReasons(nvmlDevice_t d,
                                                       unsigned long long *r_out) {
    nvmlReturn_t r = gate(d, F_THROTTLE_REASONS);
    if (r) return r;
    if (!r_out) return NVML_ERROR_INVALID_ARGUMENT;
    *r_out = d->event_reasons;
    return NVML_SUCCESS;
}

/* Sizing protocol as in NVML: too small a buffer (or none) gets INSUFFICIENT_SIZE and the
 * needed count, except that "no processes" is SUCCESS with a count of 0. */
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t d, unsigned *count,
                                                     nvmlProcessInfo_t *infos) {
    nvmlReturn_t r = gate(d, F_PROCESSES);
    if (r == NVML_SUCCESS && d->is_mig && !infos && count_read(d)) r = NVML_ERROR_GPU_IS_LOST;
    if (r) return r;
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned n = (unsigned)d->nprocs;
    if (!infos || *count < n) {
        *count = n;
        return n ? NVML_ERROR_INSUFFICIENT_SIZE : NVML_SUCCESS;
    }
    for (unsigned i = 0; i < n; i++) {
        infos[i].pid = d->procs[i].pid;
        infos[i].usedGpuMemory = d->procs[i].mem_bytes;
        /* 0xFFFFFFFF: not a MIG device */
        infos[i].gpuInstanceId = d->is_mig ? d->gi : 0xFFFFFFFFu;
        infos[i].computeInstanceId = d->is_mig ? d->ci : 0xFFFFFFFFu;
    }
    *count = n;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetProcessUtilization(nvmlDevice_t d,
                                             nvmlProcessUtilizationSample_t *samples,
                                             unsigned *count, unsigned long long last_seen_us) {
    nvmlReturn_t r = gate(d, F_PROCESS_UTIL);
    if (r) return r;
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned long long stamp_us = d->reads * 1000000ULL;
    unsigned n = 0;
    if (stamp_us > last_seen_us)
        for (int i = 0; i < d->nprocs; i++) n += d->procs[i].sm_util >= 0;
    if (n == 0) return NVML_ERROR_NOT_FOUND;
    if (!samples || *count < n) {
        *count = n;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    unsigned k = 0;
    for (int i = 0; i < d->nprocs; i++) {
        if (d->procs[i].sm_util < 0) continue;
        samples[k].pid = d->procs[i].pid;
        samples[k].timeStamp = stamp_us;
        samples[k].smUtil = (unsigned)d->procs[i].sm_util;
        samples[k].memUtil = samples[k].encUtil = samples[k].decUtil = 0;
        k++;
    }
    *count = n;
    return NVML_SUCCESS;
}

/* ---- identity: PCI, compute capability, attributes ---------------------------------- */

nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t d, nvmlPciInfo_t *pci) {
    nvmlReturn_t r = gate(d, F_PCI);
    if (r) return r;
    if (!pci) return NVML_ERROR_INVALID_ARGUMENT;
    struct fake_device *g = d->is_mig ? d->parent : d; /* a MIG device is on its GPU's bus */
    if (!g->pci_device) return NVML_ERROR_NOT_SUPPORTED;
    memset(pci, 0, sizeof *pci);
    unsigned bus = (unsigned)(g - devices) + 1;
    pci->bus = bus;
    pci->pciDeviceId = (g->pci_device << 16) | NVML_VENDOR_NVIDIA;
    pci->pciSubSystemId = 0x145110DEu;
    snprintf(pci->busIdLegacy, sizeof pci->busIdLegacy, "0000:%02X:00.0", bus & 0xFFu);
    snprintf(pci->busId, sizeof pci->busId, "00000000:%02X:00.0", bus & 0xFFu);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetCudaComputeCapability(nvmlDevice_t d, int *major, int *minor) {
    nvmlReturn_t r = gate(d, F_CC);
    if (r) return r;
    if (!major || !minor) return NVML_ERROR_INVALID_ARGUMENT;
    struct fake_device *g = d->is_mig ? d->parent : d;
    if (g->cc_major < 0) return NVML_ERROR_NOT_SUPPORTED;
    *major = g->cc_major;
    *minor = g->cc_minor;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetAttributes_v2(nvmlDevice_t d, nvmlDeviceAttributes_t *a) {
    nvmlReturn_t r = gate(d, F_ATTRIBUTES);
    if (r) return r;
    if (!a) return NVML_ERROR_INVALID_ARGUMENT;
    if (!d->sm_count) return NVML_ERROR_NOT_SUPPORTED;
    memset(a, 0, sizeof *a);
    a->multiprocessorCount = d->sm_count;
    a->gpuInstanceSliceCount = a->computeInstanceSliceCount = d->is_mig ? d->slices : 0;
    return NVML_SUCCESS;
}

/* ---- MIG -------------------------------------------------------------------------- */

nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t d, unsigned *current, unsigned *pending) {
    nvmlReturn_t r = gate(d, F_MIG_MODE);
    if (r) return r;
    if (!current || !pending) return NVML_ERROR_INVALID_ARGUMENT;
    if (d->mig_mode < 0) return NVML_ERROR_NOT_SUPPORTED;
    *current = (unsigned)d->mig_mode;
    *pending = (unsigned)d->mig_pending;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(nvmlDevice_t d, unsigned *count) {
    nvmlReturn_t r = gate(d, F_MIG_DEVICES);
    if (r) return r;
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    *count = d->mig_mode == 1 ? d->mig_max : 0; /* zero if MIG is not supported or on */
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(nvmlDevice_t d, unsigned index,
                                                 nvmlDevice_t *mig) {
    nvmlReturn_t r = gate(d, F_MIG_DEVICES);
    if (r) return r;
    if (!mig) return NVML_ERROR_INVALID_ARGUMENT;
    if (d->mig_mode != 1) return NVML_ERROR_NOT_SUPPORTED;
    if (index >= d->mig_max) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned k = 0;
    for (unsigned i = 0; i < mig_count; i++) {
        struct fake_device *m = &mig_devices[i];
        if (m->parent != d || !m->present) continue;
        if (k++ == index) return fetch_handle(m, mig);
    }
    return NVML_ERROR_NOT_FOUND;
}

nvmlReturn_t nvmlDeviceGetGpuInstanceId(nvmlDevice_t d, unsigned *id) {
    nvmlReturn_t r = gate(d, F_INSTANCE_IDS);
    if (r) return r;
    if (!id) return NVML_ERROR_INVALID_ARGUMENT;
    if (!d->is_mig) return NVML_ERROR_NOT_SUPPORTED;
    *id = d->gi;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetComputeInstanceId(nvmlDevice_t d, unsigned *id) {
    nvmlReturn_t r = gate(d, F_INSTANCE_IDS);
    if (r) return r;
    if (!id) return NVML_ERROR_INVALID_ARGUMENT;
    if (!d->is_mig) return NVML_ERROR_NOT_SUPPORTED;
    *id = d->ci;
    return NVML_SUCCESS;
}

/* ---- GPM -------------------------------------------------------------------------- */

nvmlReturn_t nvmlGpmQueryDeviceSupport(nvmlDevice_t d, nvmlGpmSupport_t *support) {
    nvmlReturn_t r = gate(d, F_GPM_SUPPORT);
    if (r) return r;
    if (!support) return NVML_ERROR_INVALID_ARGUMENT;
    if (support->version != 1) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    support->isSupportedDevice = (unsigned)d->gpm;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlGpmSampleAlloc(nvmlGpmSample_t *out) {
    if (refcount == 0) return NVML_ERROR_UNINITIALIZED;
    if (!out) return NVML_ERROR_INVALID_ARGUMENT;
    struct fake_gpm_sample *s = calloc(1, sizeof *s);
    if (!s) return NVML_ERROR_UNKNOWN;
    s->magic = SAMPLE_MAGIC;
    live_samples++;
    *out = s;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlGpmSampleFree(nvmlGpmSample_t s) {
    if (!s || s->magic != SAMPLE_MAGIC) return NVML_ERROR_INVALID_ARGUMENT;
    s->magic = 0;
    free(s);
    live_samples--;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlGpmSampleGet(nvmlDevice_t d, nvmlGpmSample_t s) {
    nvmlReturn_t r = gate(d, F_GPM_SAMPLE);
    if (r) return r;
    if (!s || s->magic != SAMPLE_MAGIC) return NVML_ERROR_INVALID_ARGUMENT;
    if (!d->gpm || d->is_mig) return NVML_ERROR_NOT_SUPPORTED;
    s->device = d;
    s->seq = ++d->gpm_seq;
    return NVML_SUCCESS;
}

/* A GPU instance's sample, kept on its first present MIG device. */
nvmlReturn_t nvmlGpmMigSampleGet(nvmlDevice_t d, unsigned gpu_instance_id, nvmlGpmSample_t s) {
    nvmlReturn_t r = gate(d, F_GPM_SAMPLE);
    if (r) return r;
    if (!s || s->magic != SAMPLE_MAGIC || d->is_mig) return NVML_ERROR_INVALID_ARGUMENT;
    if (!d->gpm || d->mig_mode != 1) return NVML_ERROR_NOT_SUPPORTED;
    for (unsigned i = 0; i < mig_count; i++) {
        struct fake_device *m = &mig_devices[i];
        if (m->parent != d || !m->present || m->gi != gpu_instance_id) continue;
        r = gate(m, F_GPM_SAMPLE);
        if (r) return r;
        s->device = m;
        s->seq = ++m->gpm_seq;
        return NVML_SUCCESS;
    }
    return NVML_ERROR_NOT_FOUND;
}

nvmlReturn_t nvmlGpmMetricsGet(nvmlGpmMetricsGet_t *m) {
    if (refcount == 0) return NVML_ERROR_UNINITIALIZED;
    if (!m) return NVML_ERROR_INVALID_ARGUMENT;
    if (m->version != 1) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    struct fake_gpm_sample *s1 = m->sample1, *s2 = m->sample2;
    if (!s1 || !s2 || s1->magic != SAMPLE_MAGIC || s2->magic != SAMPLE_MAGIC ||
        !s1->device || s1->device != s2->device || s2->seq <= s1->seq ||
        m->numMetrics > GPM_METRIC_MAX)
        return NVML_ERROR_INVALID_ARGUMENT;
    struct fake_device *d = s1->device;
    nvmlReturn_t r = gate(d, F_GPM_METRICS);
    if (r) return r;
    d->gpm_metrics_calls++;
    d->last_seq1 = s1->seq;
    d->last_seq2 = s2->seq;
    for (unsigned i = 0; i < m->numMetrics; i++) {
        nvmlGpmMetric_t *x = &m->metrics[i];
        x->metricInfo.shortName = x->metricInfo.longName = x->metricInfo.unit = NULL;
        if (x->metricId == 0 || x->metricId >= GPM_METRIC_MAX) {
            x->nvmlReturn = NVML_ERROR_INVALID_ARGUMENT;
            continue;
        }
        x->nvmlReturn = d->metric_ret[x->metricId];
        x->value = x->nvmlReturn ? 0.0 : d->metric_value[x->metricId];
    }
    return NVML_SUCCESS;
}

/* ---- test hooks ------------------------------------------------------------------- */

int fakeNvml_liveGpmSamples(void) { return live_samples; }

int fakeNvml_refcount(void) { return refcount; }

/* A driver reset of GPU <index>: it answers again through a handle fetched after this,
 * and is not lost again by its `lost` directive. Returns -1 for a bad index. */
int fakeNvml_resetGpu(unsigned index) {
    if (index >= device_count) return -1;
    devices[index].reset = devices[index].lost;
    devices[index].lost_after = -1;
    return 0;
}

/* MIG device <mig> of GPU <gpu> in scenario order, NULL if there is none. */
static struct fake_device *mig_of(unsigned gpu, unsigned mig) {
    if (gpu >= device_count) return NULL;
    for (unsigned i = 0; i < mig_count; i++) {
        if (mig_devices[i].parent != &devices[gpu]) continue;
        if (mig-- == 0) return &mig_devices[i];
    }
    return NULL;
}

/* MIG device <mig> of GPU <gpu> is created (1) or destroyed (0). Returns -1 if none. */
int fakeNvml_setMigPresent(unsigned gpu, unsigned mig, int present) {
    struct fake_device *m = mig_of(gpu, mig);
    if (!m) return -1;
    m->present = present != 0;
    return 0;
}

/* The current (and pending) MIG mode of GPU <gpu> becomes <mode>. Returns -1 if none. */
int fakeNvml_setMigMode(unsigned gpu, int mode) {
    if (gpu >= device_count) return -1;
    devices[gpu].mig_mode = devices[gpu].mig_pending = mode;
    return 0;
}

/* As fakeNvml_resetGpu, for MIG device <mig> of GPU <gpu>. Returns -1 if none. */
int fakeNvml_resetMig(unsigned gpu, unsigned mig) {
    struct fake_device *m = mig_of(gpu, mig);
    if (!m) return -1;
    m->reset = m->lost;
    m->lost_after = -1;
    return 0;
}

/* How many times GPU <index> was looked up by its UUID (-1 for a bad index). */
long long fakeNvml_uuidLookups(unsigned index) {
    if (index >= device_count) return -1;
    return (long long)devices[index].uuid_lookups;
}

/* As fakeNvml_gpmStats, for the GPU instance whose sample MIG device <mig> of GPU <gpu>
 * keeps (the first of the instance's MIG devices). Returns -1 if there is none. */
int fakeNvml_migGpmStats(unsigned gpu, unsigned mig, unsigned long long *samples_taken,
                         unsigned long long *metrics_calls, unsigned long long *last_seq1,
                         unsigned long long *last_seq2) {
    struct fake_device *m = mig_of(gpu, mig);
    if (!m) return -1;
    *samples_taken = m->gpm_seq;
    *metrics_calls = m->gpm_metrics_calls;
    *last_seq1 = m->last_seq1;
    *last_seq2 = m->last_seq2;
    return 0;
}

/* GPM counters of GPU <index>: samples taken, nvmlGpmMetricsGet calls, and the sample
 * numbers of the last interval. Returns -1 for a bad index. */
int fakeNvml_gpmStats(unsigned index, unsigned long long *samples_taken,
                      unsigned long long *metrics_calls, unsigned long long *last_seq1,
                      unsigned long long *last_seq2) {
    if (index >= device_count) return -1;
    struct fake_device *d = &devices[index];
    *samples_taken = d->gpm_seq;
    *metrics_calls = d->gpm_metrics_calls;
    *last_seq1 = d->last_seq1;
    *last_seq2 = d->last_seq2;
    return 0;
}
