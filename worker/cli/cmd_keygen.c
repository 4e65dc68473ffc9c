/* cmd_keygen.c - `facemill keygen NAME [-d DIR]`: makes the CurveZMQ key pair of one
 * broker, sink, worker or client (include/facemill/auth.h writes the certificate
 * files). A command of its own so setting up keys needs nothing but facemill: the
 * files are the ones CZMQ and pyzmq's zmq.auth read, so other programs can use them
 * too. */
#include "commands.h"
#include "facemill/auth.h"

#include <stdio.h>
#include <string.h>

static void usage(FILE *out)
{
    fprintf(out,
            "usage: facemill keygen NAME [-d DIR]\n"
            "\n"
            "Makes a CurveZMQ key pair in DIR (default: the working directory):\n"
            "  NAME.key         the public certificate: copy it into the allowlist\n"
            "                   directory (security.clients_dir, workers_dir, sink_dir) of\n"
            "                   every process that must admit NAME, or name it in\n"
            "                   security.broker_key / security.sink_key\n"
            "  NAME.key_secret  the secret certificate (mode 0600): NAME's own\n"
            "                   security.cert; keep it on NAME's machine only\n"
            "Existing files are never overwritten. Prints the public key.\n"
            "Exit: 0 written, 1 failure, 2 usage.\n");
}

int fm_cmd_keygen(int argc, char **argv)
{
    const char *dir = ".", *name = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else if ((strcmp(a, "-d") == 0 || strcmp(a, "--dir") == 0) && i + 1 < argc) {
            dir = argv[++i];
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "facemill keygen: unknown option '%s'\n\n", a);
            usage(stderr);
            return 2;
        } else if (!name) {
            name = a;
        } else {
            fprintf(stderr, "facemill keygen: one NAME only\n\n");
            usage(stderr);
            return 2;
        }
    }
    if (!name) {
        usage(stderr);
        return 2;
    }
    fm_cert cert;
    fm_error err = {0};
    if (fm_cert_create(dir, name, &cert, &err) != FM_OK) {
        fprintf(stderr, "facemill keygen: %s\n", fm_error_text(&err));
        return err.code == FM_ERR_INVALID && strstr(err.msg, "file name") ? 2 : 1;
    }
    printf("%s\n", cert.public_key);
    fprintf(stderr, "facemill keygen: wrote %s/%s.key and %s/%s.key_secret\n", dir, name,
            dir, name);
    memset(&cert, 0, sizeof cert);
    return 0;
}
