/* file.c - a file opened for reading only when it is regular, without blocking
 * (include/facemill/file.h). */
#include "facemill/file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* What a file that is not regular is, for the message. */
static const char *not_regular(mode_t mode)
{
    if (S_ISDIR(mode))
        return "a directory, not a regular file";
    if (S_ISFIFO(mode))
        return "a FIFO, not a regular file";
    if (S_ISCHR(mode) || S_ISBLK(mode))
        return "a device, not a regular file";
    if (S_ISSOCK(mode))
        return "a socket, not a regular file";
    return "not a regular file";
}

/* 1 when fd is a pipe without a name (a shell's <(...), a pipe on standard input):
 * another program holds its writing end, so reading it ends. A named FIFO shows its
 * path in /proc/self/fd instead of "pipe:[N]". */
static int anonymous_pipe(int fd)
{
    char link[64], target[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, target, sizeof target - 1);
    return n > 5 && strncmp(target, "pipe:", 5) == 0;
}

/* path opened with O_NONBLOCK (the open of a FIFO returns at once instead of waiting
 * for a writer), checked, then made blocking: a regular file, and with streams also
 * a pipe without a name or a character device. */
static int open_checked(const char *path, int streams, const char **why)
{
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) {
        *why = strerror(errno);
        return -1;
    }
    struct stat sb;
    int fl;
    if (fstat(fd, &sb) != 0) {
        *why = strerror(errno);
    } else if (streams && S_ISFIFO(sb.st_mode) && !anonymous_pipe(fd)) {
        *why = "a named FIFO, whose open would wait for a writer (give a file, or a pipe "
               "such as <(...))";
    } else if (streams && S_ISDIR(sb.st_mode)) {
        *why = "a directory, not a configuration file";
    } else if (!S_ISREG(sb.st_mode) &&
               !(streams && (S_ISCHR(sb.st_mode) || S_ISFIFO(sb.st_mode)))) {
        *why = streams ? "neither a file nor a pipe" : not_regular(sb.st_mode);
    } else if ((fl = fcntl(fd, F_GETFL)) < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) != 0) {
        *why = strerror(errno);
    } else {
        return fd;
    }
    close(fd);
    return -1;
}

int fm_file_open_regular(const char *path, const char **why)
{
    return open_checked(path, 0, why);
}

int fm_file_open_stream(const char *path, const char **why)
{
    return open_checked(path, 1, why);
}

FILE *fm_file_fopen_regular(const char *path, const char **why)
{
    int fd = fm_file_open_regular(path, why);
    if (fd < 0)
        return NULL;
    FILE *f = fdopen(fd, "rb");
    if (!f) {
        *why = strerror(errno);
        close(fd);
    }
    return f;
}
