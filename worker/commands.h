/* commands.h - the subcommands of the `facemill` program. Each takes the arguments
 * after its name (argv[0] is the subcommand's name) and returns the process exit
 * code: 0 success, 1 failure, 2 usage error. */
#ifndef FACEMILL_COMMANDS_H
#define FACEMILL_COMMANDS_H

typedef int (*fm_command_fn)(int argc, char **argv);

/* --- commands --- */
int fm_cmd_model(int argc, char **argv); /* cmd_model.c: info, verify */
int fm_cmd_config(int argc, char **argv); /* cmd_config.c: show the configuration */
int fm_cmd_detect(int argc, char **argv); /* cmd_detect.c: faces and landmarks */
/* --- end of commands --- */

#endif
