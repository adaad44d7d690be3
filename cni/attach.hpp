// The kernel seam kmesh-cni attaches through; the code lives in common/pod_links.hpp, shared with
// the agent's enrolment reconciler.
#pragma once

#include "common/pod_links.hpp"

namespace kmesh::cni {

using kmesh::Kernel;
using kmesh::KernelFd;
using kmesh::LinkInfo;
using kmesh::LinuxKernel;

}  // namespace kmesh::cni
