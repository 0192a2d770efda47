<?php
// Send one message through an SMTP relay with PHPMailer over TLS, optionally with SMTP AUTH.
// Usage: php phpmailer_tls_send.php PORT SECURE TRUST USER PASSWORD FROM TO SUBJECT BODY
//   SECURE  auto: PHPMailer's defaults (SMTPSecure '', SMTPAutoTLS on: STARTTLS whenever offered);
//           tls: STARTTLS required; ssl: implicit TLS from the first byte (port 465 style)
//   TRUST   '' : no SMTPOptions at all (PHP verifies against the system CAs);
//           noverify: ['verify_peer' => false, 'verify_peer_name' => false];
//           anything else: the path of a CA file, verification on (['cafile' => TRUST])
//   USER    '' : SMTPAuth off
// Prints "OK" and exits 0, or prints PHPMailer's ErrorInfo and exits 1. The dialogue goes to stderr at
// DEBUG_CONNECTION: both sides' lines (so a caller sees the STARTTLS PHPMailer chose by itself) and the
// TLS error PHP gives when it refuses a certificate (PHPMailer prints "[credentials hidden]" for AUTH).
declare(strict_types=1);

require '/usr/share/php/libphp-phpmailer/autoload.php';

use PHPMailer\PHPMailer\Exception;
use PHPMailer\PHPMailer\PHPMailer;
use PHPMailer\PHPMailer\SMTP;

if ($argc !== 10) {
    fwrite(STDERR, "usage: phpmailer_tls_send.php PORT SECURE TRUST USER PASSWORD FROM TO SUBJECT BODY\n");
    exit(2);
}
[, $port, $secure, $trust, $user, $password, $from, $to, $subject, $body] = $argv;

$mail = new PHPMailer(true);
try {
    $mail->isSMTP();
    $mail->Host = '127.0.0.1';
    $mail->Port = (int) $port;
    if ($secure === 'tls') {
        $mail->SMTPSecure = PHPMailer::ENCRYPTION_STARTTLS;
    } elseif ($secure === 'ssl') {
        $mail->SMTPSecure = PHPMailer::ENCRYPTION_SMTPS;
    } elseif ($secure !== 'auto') {
        fwrite(STDERR, "SECURE must be auto, tls or ssl\n");
        exit(2);
    }
    if ($trust === 'noverify') {
        $mail->SMTPOptions = ['ssl' => ['verify_peer' => false, 'verify_peer_name' => false]];
    } elseif ($trust !== '') {
        $mail->SMTPOptions = ['ssl' => ['cafile' => $trust, 'verify_peer' => true, 'verify_peer_name' => true]];
    }
    if ($user !== '') {
        $mail->SMTPAuth = true;
        $mail->Username = $user;
        $mail->Password = $password;
    }
    $mail->Timeout = 30;
    $mail->Hostname = 'phpmailer.test';
    $mail->SMTPDebug = SMTP::DEBUG_CONNECTION;
    $mail->Debugoutput = static function (string $line, int $level): void {
        fwrite(STDERR, $line);
    };
    $mail->setFrom($from, 'Alice Example');
    $mail->addAddress($to);
    $mail->Subject = $subject;
    $mail->Body = $body;
    $mail->send();
    echo "OK\n";
    exit(0);
} catch (Exception $e) {
    echo $mail->ErrorInfo, "\n";
    exit(1);
}
