// review-reminder in C: the reference job (its contract: ../../review-reminder.md).
//
// The bindings wit-bindgen generates for the `job-handler` world (job_handler.h) call
// `exports_job_handler_run` once per job, in a fresh instance. Returning true with `*ret` set
// completes the job with that JSON result (`is_some = false`: no result). Returning false with
// `*err` set to `retry` or `fail` is the job's error. A trap (abort(), a wild pointer) makes the
// runner retry the job like a crash, with the end of what the plugin wrote to stderr.
//
// Strings handed back to the host must come from malloc: the bindings free them after the
// host has copied them.

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cJSON.h"
#include "job_handler.h"

typedef struct {
    const char *title;
    const char *url;
    uint32_t age_days;
    size_t position; // in the payload: equal ages keep this order
} pull_request_t;

typedef struct {
    const char *user;
    pull_request_t *pull_requests;
    size_t count;
    const char *simulate;
} request_t;

// Formats into a malloc'd string (never NULL).
static char *format(const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    int len = vsnprintf(NULL, 0, fmt, args);
    va_end(args);
    char *text = malloc((size_t)len + 1);
    if (text == NULL) abort();
    va_start(args, fmt);
    vsnprintf(text, (size_t)len + 1, fmt, args);
    va_end(args);
    return text;
}

// Sets `*err` to the job error `tag` with `message` (taking ownership) and returns false.
static bool job_error(job_handler_job_error_t *err, uint8_t tag, char *message) {
    err->tag = tag;
    // `retry` and `fail` both carry a string, in the same place.
    err->val.fail = (job_handler_string_t){(uint8_t *)message, strlen(message)};
    return false;
}

static void log_info(const char *message) {
    job_handler_string_t text;
    job_handler_string_set(&text, message);
    jobrunner_plugin_host_log(JOBRUNNER_PLUGIN_HOST_LEVEL_INFO, &text);
}

// The field `name` of `object`, of the kind `is_kind` checks; else NULL and `*why` says so.
static const cJSON *field(const cJSON *object, const char *where, const char *name,
                          cJSON_bool (*is_kind)(const cJSON *), const char *expected,
                          char **why) {
    const cJSON *value = cJSON_GetObjectItemCaseSensitive(object, name);
    const char *dot = where[0] ? "." : "";
    if (value == NULL) {
        *why = format("missing field `%s%s%s`", where, dot, name);
    } else if (!is_kind(value)) {
        *why = format("%s%s%s: expected %s", where, dot, name, expected);
        value = NULL;
    }
    return value;
}

static cJSON_bool is_age(const cJSON *value) {
    double days = value->valuedouble;
    return cJSON_IsNumber(value) && days >= 0 && days <= 4294967295.0 &&
           (double)(uint32_t)days == days;
}

// Reads the payload into `request`; on error returns a malloc'd reason.
static char *parse(const cJSON *payload, request_t *request) {
    char *why = NULL;
    if (!cJSON_IsObject(payload)) return format("expected an object");
    const cJSON *user = field(payload, "", "user", cJSON_IsString, "a string", &why);
    if (user == NULL) return why;
    const cJSON *prs = field(payload, "", "pull_requests", cJSON_IsArray, "an array", &why);
    if (prs == NULL) return why;
    const cJSON *simulate = cJSON_GetObjectItemCaseSensitive(payload, "simulate");

    request->user = user->valuestring;
    request->simulate = cJSON_IsString(simulate) ? simulate->valuestring : NULL;
    if (simulate != NULL && !cJSON_IsNull(simulate) && !cJSON_IsString(simulate))
        return format("simulate: expected a string");
    request->count = (size_t)cJSON_GetArraySize(prs);
    request->pull_requests = calloc(request->count + 1, sizeof(pull_request_t));
    if (request->pull_requests == NULL) abort();

    size_t i = 0;
    const cJSON *pr;
    cJSON_ArrayForEach(pr, prs) {
        char where[64];
        snprintf(where, sizeof where, "pull_requests[%zu]", i);
        if (!cJSON_IsObject(pr)) return format("%s: expected an object", where);
        const cJSON *title = field(pr, where, "title", cJSON_IsString, "a string", &why);
        const cJSON *url = title ? field(pr, where, "url", cJSON_IsString, "a string", &why) : NULL;
        const cJSON *age =
            url ? field(pr, where, "age_days", is_age, "a non-negative integer", &why) : NULL;
        if (age == NULL) return why;
        request->pull_requests[i] = (pull_request_t){
            title->valuestring, url->valuestring, (uint32_t)age->valuedouble, i};
        i++;
    }
    return NULL;
}

// Oldest first; equal ages keep the order they came in (qsort alone is not stable).
static int oldest_first(const void *a, const void *b) {
    const pull_request_t *x = a, *y = b;
    if (x->age_days != y->age_days) return x->age_days > y->age_days ? -1 : 1;
    return x->position < y->position ? -1 : 1;
}

static char *message(const request_t *request) {
    if (request->count == 0)
        return format("Hi %s, no pull requests are waiting for your review.", request->user);
    const char *noun = request->count == 1 ? "pull request is" : "pull requests are";
    char *text = format("Hi %s, %zu %s waiting for your review:", request->user,
                        request->count, noun);
    for (size_t i = 0; i < request->count; i++) {
        const pull_request_t *pr = &request->pull_requests[i];
        char *longer = format("%s\n- %s (%u %s) %s", text, pr->title, pr->age_days,
                              pr->age_days == 1 ? "day" : "days", pr->url);
        free(text);
        text = longer;
    }
    return text;
}

static bool blank(const char *text) {
    for (; *text; text++)
        if (!strchr(" \t\n\r\f\v", *text)) return false;
    return true;
}

bool exports_job_handler_run(job_handler_job_t *job, job_handler_option_string_t *ret,
                             job_handler_job_error_t *err) {
    cJSON *payload = cJSON_ParseWithLength((const char *)job->payload.ptr, job->payload.len);
    request_t request = {0};
    char *why = payload ? parse(payload, &request) : format("not JSON");
    if (why != NULL) {
        char *reason = format("invalid payload: %s", why);
        free(why);
        return job_error(err, JOBRUNNER_PLUGIN_TYPES_JOB_ERROR_FAIL, reason);
    }
    if (blank(request.user))
        return job_error(err, JOBRUNNER_PLUGIN_TYPES_JOB_ERROR_FAIL, format("user is empty"));
    if (request.simulate != NULL) {
        if (strcmp(request.simulate, "outage") == 0)
            return job_error(err, JOBRUNNER_PLUGIN_TYPES_JOB_ERROR_RETRY,
                             format("reminder service unavailable (simulated outage)"));
        if (strcmp(request.simulate, "crash") == 0) {
            fprintf(stderr, "simulated crash\n");
            abort();
        }
        return job_error(err, JOBRUNNER_PLUGIN_TYPES_JOB_ERROR_FAIL,
                         format("invalid payload: simulate: unknown value \"%s\"", request.simulate));
    }

    qsort(request.pull_requests, request.count, sizeof(pull_request_t), oldest_first);
    char *text = message(&request);
    log_info(text);

    cJSON *result = cJSON_CreateObject();
    cJSON_AddStringToObject(result, "user", request.user);
    cJSON_AddNumberToObject(result, "count", (double)request.count);
    cJSON_AddStringToObject(result, "message", text);
    char *json = cJSON_PrintUnformatted(result);
    if (json == NULL) abort();
    ret->is_some = true;
    ret->val = (job_handler_string_t){(uint8_t *)json, strlen(json)};

    free(text);
    free(request.pull_requests);
    cJSON_Delete(result);
    cJSON_Delete(payload);
    job_handler_job_free(job);
    return true;
}
