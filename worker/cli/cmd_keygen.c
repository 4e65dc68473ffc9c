/* cmd_keygen.c - `facemill keygen NAME [-d DIR]`: makes the CurveZMQ key pair of one
 * broker, sink, worker or client (include/facemill/auth.h writes the certificate
 * files). A command of its own so setting up keys needs nothing but facemill: the
 * files are the ones CZMQ and pyzmq's zmq.auth read, so other programs can use them
 * too. */
#include "cli_opts.h"
#include "cmd_util.h"
#include "commands.h"
#include "facemill/auth.h"

#include <stdio.h>
#include <string.h>

static const cli_cmd cmd = {
    "keygen", "[options] NAME", 1, 1,
    "Makes a CurveZMQ key pair in DIR (default: the working directory; made with\n"
    "its missing parents when it does not exist):\n"
    "  NAME.key         the public certificate: copy it into the allowlist\n"
    "                   directory (security.clients_dir, workers_dir, sink_dir) of\n"
    "                   every process that must admit NAME, or name it in\n"
    "                   security.broker_key / security.sink_key\n"
    "  NAME.key_secret  the secret certificate (mode 0600): NAME's own\n"
    "                   security.cert; keep it on NAME's machine only\n"
    "Existing files are never overwritten. Prints the public key.\n",
    "exit status: 0 both files written, 1 failure (a file exists, a write failed), "
    "2 usage error",
    NULL};

int fm_cmd_keygen(int argc, char **argv)
{
    const char *dir = ".";
    const cli_opt opts[] = {
        CLI_PATH("--dir", 'd', "DIR", &dir, "where the files go (default: the working "
                                            "directory; made when missing)"),
        CLI_END,
    };
    fm_config c;
    cli_args a;
    int rc = cli_start(&cmd, opts, argc, argv, &c, &a);
    if (rc >= 0)
        return rc;
    const char *name = a.operands[0];
    fm_cert cert;
    fm_error err = {0};
    if (fm_cmd_make_dirs(dir, &err) != FM_OK)
        return cli_fail(&cmd, "--dir: %s", fm_error_text(&err));
    if (fm_cert_create(dir, name, &cert, &err) != FM_OK) {
        if (err.code == FM_ERR_INVALID && strstr(err.msg, "file name"))
            return cli_usage_error(&cmd, "%s", fm_error_text(&err));
        return cli_fail(&cmd, "%s", fm_error_text(&err));
    }
    printf("%s\n", cert.public_key);
    fprintf(stderr, "facemill keygen: wrote %s/%s.key and %s/%s.key_secret\n", dir, name,
            dir, name);
    memset(&cert, 0, sizeof cert);
    return CLI_EXIT_OK;
}
