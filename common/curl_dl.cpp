// libcurl, loaded when first called. kmesh-cni links the kube client (common/kube/client.cpp)
// against these definitions instead of libcurl.so, so its start path maps no libcurl, OpenSSL,
// GnuTLS, Kerberos, LDAP... (~30 libraries, 15 ms of process start measured here; see
// docs/benchmarks.md) and an ADD that never asks the API server pays nothing for it.
//
// Only the functions the client calls are provided; a missing library or symbol makes
// curl_easy_init/curl_multi_init return null and curl_global_init fail, which the client reports
// as a kInternal status (the ADD then fails with code 11, "try again later").
// curl.h's GCC type-checking macros would rewrite the definitions of curl_easy_setopt/getinfo.
#define CURL_DISABLE_TYPECHECK 1
#include <curl/curl.h>
#include <dlfcn.h>

#include <cstdarg>
#include <cstdint>
#include <mutex>

namespace {

void* library() {
    static void* handle = nullptr;
    static std::once_flag once;
    // RTLD_LOCAL: libcurl's own dependencies never resolve against this binary's symbols (the
    // definitions below would otherwise shadow libcurl's for its internal calls).
    std::call_once(once, [] { handle = dlopen("libcurl.so.4", RTLD_NOW | RTLD_LOCAL); });
    return handle;
}

template <typename Fn>
Fn resolve(const char* name) {
    void* lib = library();
    return lib ? reinterpret_cast<Fn>(dlsym(lib, name)) : nullptr;
}

// Each function's pointer, resolved once (thread-safe static init).
#define KMESH_CURL_FN(name) static const auto fn = resolve<decltype(&::name)>(#name)

}  // namespace

extern "C" {

CURLcode curl_global_init(long flags) {
    KMESH_CURL_FN(curl_global_init);
    return fn ? fn(flags) : CURLE_FAILED_INIT;
}

CURL* curl_easy_init(void) {
    KMESH_CURL_FN(curl_easy_init);
    return fn ? fn() : nullptr;
}

// The variadic argument's type follows from the option number (curl.h: CURLOPTTYPE_*): below
// CURLOPTTYPE_OBJECTPOINT a long, from CURLOPTTYPE_OFF_T to CURLOPTTYPE_BLOB a curl_off_t, anything
// else a pointer (object, string, function, blob).
CURLcode curl_easy_setopt(CURL* curl, CURLoption option, ...) {
    KMESH_CURL_FN(curl_easy_setopt);
    if (!fn) return CURLE_FAILED_INIT;
    va_list ap;
    va_start(ap, option);
    CURLcode rc;
    const int o = static_cast<int>(option);
    if (o < CURLOPTTYPE_OBJECTPOINT) {
        rc = fn(curl, option, va_arg(ap, long));
    } else if (o >= CURLOPTTYPE_OFF_T && o < CURLOPTTYPE_BLOB) {
        rc = fn(curl, option, va_arg(ap, curl_off_t));
    } else {
        rc = fn(curl, option, va_arg(ap, void*));
    }
    va_end(ap);
    return rc;
}

// Every CURLINFO takes a pointer to where the answer goes.
CURLcode curl_easy_getinfo(CURL* curl, CURLINFO info, ...) {
    KMESH_CURL_FN(curl_easy_getinfo);
    if (!fn) return CURLE_FAILED_INIT;
    va_list ap;
    va_start(ap, info);
    void* out = va_arg(ap, void*);
    va_end(ap);
    return fn(curl, info, out);
}

CURLcode curl_easy_perform(CURL* curl) {
    KMESH_CURL_FN(curl_easy_perform);
    return fn ? fn(curl) : CURLE_FAILED_INIT;
}

void curl_easy_reset(CURL* curl) {
    KMESH_CURL_FN(curl_easy_reset);
    if (fn) fn(curl);
}

void curl_easy_cleanup(CURL* curl) {
    KMESH_CURL_FN(curl_easy_cleanup);
    if (fn) fn(curl);
}

const char* curl_easy_strerror(CURLcode code) {
    KMESH_CURL_FN(curl_easy_strerror);
    return fn ? fn(code) : "libcurl.so.4 could not be loaded";
}

curl_slist* curl_slist_append(curl_slist* list, const char* s) {
    KMESH_CURL_FN(curl_slist_append);
    return fn ? fn(list, s) : nullptr;
}

void curl_slist_free_all(curl_slist* list) {
    KMESH_CURL_FN(curl_slist_free_all);
    if (fn) fn(list);
}

CURLM* curl_multi_init(void) {
    KMESH_CURL_FN(curl_multi_init);
    return fn ? fn() : nullptr;
}

CURLMcode curl_multi_add_handle(CURLM* m, CURL* e) {
    KMESH_CURL_FN(curl_multi_add_handle);
    return fn ? fn(m, e) : CURLM_INTERNAL_ERROR;
}

CURLMcode curl_multi_remove_handle(CURLM* m, CURL* e) {
    KMESH_CURL_FN(curl_multi_remove_handle);
    return fn ? fn(m, e) : CURLM_INTERNAL_ERROR;
}

CURLMcode curl_multi_perform(CURLM* m, int* running) {
    KMESH_CURL_FN(curl_multi_perform);
    return fn ? fn(m, running) : CURLM_INTERNAL_ERROR;
}

CURLMcode curl_multi_poll(CURLM* m, curl_waitfd extra[], unsigned n, int timeout_ms, int* numfds) {
    KMESH_CURL_FN(curl_multi_poll);
    return fn ? fn(m, extra, n, timeout_ms, numfds) : CURLM_INTERNAL_ERROR;
}

CURLMsg* curl_multi_info_read(CURLM* m, int* left) {
    KMESH_CURL_FN(curl_multi_info_read);
    return fn ? fn(m, left) : nullptr;
}

CURLMcode curl_multi_cleanup(CURLM* m) {
    KMESH_CURL_FN(curl_multi_cleanup);
    return fn ? fn(m) : CURLM_INTERNAL_ERROR;
}

}  // extern "C"
