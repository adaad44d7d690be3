// cni_exec CONFIG COMMAND PLUGIN: runs PLUGIN with CONFIG on stdin and CNI_COMMAND=COMMAND, by
// exec (no fork, no shell), so hyperfine -N can time a CNI plugin the way a runtime runs it
// (hyperfine 1.15, Debian's, has no --input). Linked statically: its own exec costs the same
// ~0.3 ms for every plugin timed through it, and bench/cni_start.sh measures that cost alone.
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char** argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: cni_exec CONFIG COMMAND PLUGIN [ARGS...]\n");
        return 2;
    }
    int fd = open(argv[1], O_RDONLY | O_CLOEXEC);
    if (fd < 0 || dup2(fd, 0) < 0) {
        perror(argv[1]);
        return 2;
    }
    if (setenv("CNI_COMMAND", argv[2], 1) != 0) return 2;
    execv(argv[3], argv + 3);
    perror(argv[3]);
    return 127;
}
