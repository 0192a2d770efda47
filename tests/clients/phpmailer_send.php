<?php
// Send one message through an SMTP relay with PHPMailer (what WordPress uses), no auth, no TLS.
// Usage: php phpmailer_send.php PORT FROM FROM_NAME TO CC BCC SUBJECT BODY
// Prints "OK" and exits 0, or prints PHPMailer's ErrorInfo and exits 1; the SMTP replies go to stderr.
declare(strict_types=1);

require '/usr/share/php/libphp-phpmailer/autoload.php';

use PHPMailer\PHPMailer\Exception;
use PHPMailer\PHPMailer\PHPMailer;
use PHPMailer\PHPMailer\SMTP;

if ($argc !== 9) {
    fwrite(STDERR, "usage: phpmailer_send.php PORT FROM FROM_NAME TO CC BCC SUBJECT BODY\n");
    exit(2);
}
[, $port, $from, $fromName, $to, $cc, $bcc, $subject, $body] = $argv;

$mail = new PHPMailer(true);
try {
    $mail->isSMTP();
    $mail->Host = '127.0.0.1';
    $mail->Port = (int) $port;
    $mail->SMTPAuth = false;
    $mail->SMTPAutoTLS = false;
    $mail->SMTPSecure = '';
    $mail->Timeout = 30;
    $mail->Hostname = 'phpmailer.test';
    // The server's replies go to stderr, so a caller sees the exact SMTP codes (ErrorInfo omits them).
    $mail->SMTPDebug = SMTP::DEBUG_SERVER;
    $mail->Debugoutput = static function (string $line, int $level): void {
        fwrite(STDERR, $line);
    };
    $mail->setFrom($from, $fromName);
    $mail->addAddress($to);
    if ($cc !== '') {
        $mail->addCC($cc);
    }
    if ($bcc !== '') {
        $mail->addBCC($bcc);
    }
    $mail->Subject = $subject;
    $mail->Body = $body;
    $mail->send();
    echo "OK\n";
    exit(0);
} catch (Exception $e) {
    echo $mail->ErrorInfo, "\n";
    exit(1);
}
