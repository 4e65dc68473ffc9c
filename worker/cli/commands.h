/* commands.h - the subcommands of the `facemill` program. Each takes the arguments
 * after its name (argv[0] is the subcommand's name), reads them with cli_start
 * (cli_opts.h) and returns the process exit code: 0 success, 1 failure, 2 usage
 * error (label and submit: 3, a run that did not finish). */
#ifndef FACEMILL_COMMANDS_H
#define FACEMILL_COMMANDS_H

typedef int (*fm_command_fn)(int argc, char **argv);

/* --- commands --- */
int fm_cmd_model(int argc, char **argv); /* cmd_model.c: info, verify, get, compact, expand */
int fm_cmd_config(int argc, char **argv); /* cmd_config.c: show the configuration */
int fm_cmd_detect(int argc, char **argv); /* cmd_detect.c: faces and landmarks */
int fm_cmd_train(int argc, char **argv); /* cmd_train.c: train the attribute heads */
int fm_cmd_finetune(int argc, char **argv); /* cmd_finetune.c: train without --freeze */
int fm_cmd_predict(int argc, char **argv); /* cmd_predict.c: faces and attributes */
int fm_cmd_eval(int argc, char **argv); /* cmd_eval.c: metrics on labelled images */
int fm_cmd_export(int argc, char **argv); /* worker/cli/cmd_export.c: results to JSONL/CSV */
int fm_cmd_submit(int argc, char **argv); /* worker/cli/cmd_submit.c: submit to a broker */
int fm_cmd_status(int argc, char **argv); /* worker/cli/cmd_submit.c: broker status */
int fm_cmd_label(int argc, char **argv); /* worker/cli/cmd_submit.c: label on this machine */
int fm_cmd_models(int argc, char **argv); /* cmd_models.c: fetch and list model files */
int fm_cmd_bench(int argc, char **argv); /* cmd_bench.c: measure labelling on this machine */
int fm_cmd_keygen(int argc, char **argv); /* cmd_keygen.c: a CurveZMQ key pair */
int fm_cmd_report(int argc, char **argv); /* cmd_report.c: a results database as HTML */
/* --- end of commands --- */

#endif
