// A tiny TCP peer for the end-to-end tests.
//   echo_tool serve NAME PORT          dual-stack listener; answers every connection with "NAME\n"
//   echo_tool connect ADDR PORT [N] [--mapped] [--timeout-ms T]
//                                      N connections; prints the answer or "error <ERRNO_NAME>" per line
// --mapped connects an AF_INET6 socket to ::ffff:ADDR, as Java's dual-stack sockets do.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace {

const char* errno_name(int e) {
    switch (e) {
        case ECONNREFUSED:
            return "ECONNREFUSED";
        case EHOSTUNREACH:
            return "EHOSTUNREACH";
        case ENETUNREACH:
            return "ENETUNREACH";
        case ETIMEDOUT:
            return "ETIMEDOUT";
        case EPERM:
            return "EPERM";
        default:
            return strerrorname_np(e);
    }
}

int serve(const char* name, int port) {
    int fd = socket(AF_INET6, SOCK_STREAM, 0);
    int zero = 0, one = 1;
    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in6 a{};
    a.sin6_family = AF_INET6;
    a.sin6_port = htons(port);
    a.sin6_addr = in6addr_any;
    if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) || listen(fd, 512)) {
        perror("bind/listen");
        return 1;
    }
    std::string reply = std::string(name) + "\n";
    for (;;) {
        int c = accept(fd, nullptr, nullptr);
        if (c < 0) continue;
        if (write(c, reply.data(), reply.size()) < 0) perror("write");
        close(c);
    }
}

// One connection with a deadline; returns the line read or "error NAME".
std::string connect_once(const char* addr, int port, bool mapped, int timeout_ms) {
    sockaddr_storage ss{};
    socklen_t len;
    int family;
    in_addr v4{};
    in6_addr v6{};
    if (inet_pton(AF_INET, addr, &v4) == 1 && !mapped) {
        auto* s = reinterpret_cast<sockaddr_in*>(&ss);
        s->sin_family = family = AF_INET;
        s->sin_port = htons(port);
        s->sin_addr = v4;
        len = sizeof *s;
    } else {
        auto* s = reinterpret_cast<sockaddr_in6*>(&ss);
        if (inet_pton(AF_INET, addr, &v4) == 1) {
            v6.s6_addr[10] = v6.s6_addr[11] = 0xff;
            std::memcpy(&v6.s6_addr[12], &v4, 4);
        } else if (inet_pton(AF_INET6, addr, &v6) != 1) {
            return "error bad-address";
        }
        s->sin6_family = family = AF_INET6;
        s->sin6_port = htons(port);
        s->sin6_addr = v6;
        len = sizeof *s;
    }
    int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK, 0);
    std::string out;
    int err = connect(fd, reinterpret_cast<sockaddr*>(&ss), len) == 0 ? 0 : errno;
    if (err == EINPROGRESS) {
        pollfd p{fd, POLLOUT, 0};
        socklen_t elen = sizeof err;
        if (poll(&p, 1, timeout_ms) <= 0)
            err = ETIMEDOUT;
        else
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen);
    }
    if (err) {
        out = std::string("error ") + errno_name(err);
    } else {
        pollfd p{fd, POLLIN, 0};
        char buf[256];
        ssize_t n = poll(&p, 1, timeout_ms) > 0 ? read(fd, buf, sizeof buf - 1) : -1;
        if (n < 0) {
            out = "error no-reply";
        } else {
            buf[n] = 0;
            out = buf;
            while (!out.empty() && out.back() == '\n') out.pop_back();
        }
    }
    close(fd);
    return out;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc >= 4 && std::string(argv[1]) == "serve") return serve(argv[2], std::atoi(argv[3]));
    if (argc >= 4 && std::string(argv[1]) == "connect") {
        int n = 1, timeout_ms = 1000;
        bool mapped = false;
        for (int i = 4; i < argc; i++) {
            std::string a = argv[i];
            if (a == "--mapped")
                mapped = true;
            else if (a == "--timeout-ms" && i + 1 < argc)
                timeout_ms = std::atoi(argv[++i]);
            else
                n = std::atoi(argv[i]);
        }
        for (int i = 0; i < n; i++)
            std::printf("%s\n", connect_once(argv[2], std::atoi(argv[3]), mapped, timeout_ms).c_str());
        return 0;
    }
    std::fprintf(stderr,
                 "usage: echo_tool serve NAME PORT | connect ADDR PORT [N] [--mapped] [--timeout-ms T]\n");
    return 2;
}
