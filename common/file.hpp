// Whole-file reads with the failure as a Status, shared by the installer, the kube config loader and
// the xDS client (root certificate, rotating token).
#pragma once

#include <string>

#include "common/status.hpp"

namespace kmesh {

// Status for the current errno after `what` failed: ENOENT kNotFound, EACCES/EPERM
// kPermissionDenied, anything else kIo; the message is "<what>: <strerror>".
Status errno_status(const std::string& what);

// The file's bytes (read until EOF, EINTR retried).
Result<std::string> read_file(const std::string& path);

}  // namespace kmesh
