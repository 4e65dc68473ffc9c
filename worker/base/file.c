/* file.c - a file opened for reading only when it is regular, without blocking
 * (include/facemill/file.h). */
#include "facemill/file.h"

#include <errno.h>
#include <fcntl.h>
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

int fm_file_open_regular(const char *path, const char **why)
{
    /* O_NONBLOCK: the open of a FIFO returns at once instead of waiting for a writer */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) {
        *why = strerror(errno);
        return -1;
    }
    struct stat sb;
    int fl;
    if (fstat(fd, &sb) != 0) {
        *why = strerror(errno);
    } else if (!S_ISREG(sb.st_mode)) {
        *why = not_regular(sb.st_mode);
    } else if ((fl = fcntl(fd, F_GETFL)) < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) != 0) {
        *why = strerror(errno);
    } else {
        return fd;
    }
    close(fd);
    return -1;
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
