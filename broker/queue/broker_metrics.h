/* broker_metrics.h - the broker's metrics.file (broker_metrics.c). */
#ifndef FACEMILL_BROKER_METRICS_H
#define FACEMILL_BROKER_METRICS_H

#include "facemill/config.h"
#include "facemill/status.h"
#include "facemill/wire.h"

/* Replaces the file metrics.file names (%n: "broker") with the status r as Prometheus
 * metrics (status_metrics.h) and the journal's file and filesystem sizes. Errors:
 * FM_ERR_IO, FM_ERR_NOMEM, FM_ERR_INVALID (the path does not fit). */
fm_status fm_broker_metrics_write(const fm_config *c, const Facemill__StatusReply *r,
                                  fm_error *err);

#endif
